"""A simulated plant as the live optimizer sees it: its telemetry, not its internals.

Each `observe` reads the simulator's telemetry (the values its collectors would publish:
register resolutions, active setpoints), puts the readings the optimizer's feature table
needs into a `latest` table like the store's, and asks `twin.optimizer.observe.
current_state` for the setpoints and state, the same call `dctwin serve` makes.
"""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa

from simulator.model import SiteSimulator
from twin.optimizer.observe import FEATURE_METRICS, Observation, current_state


class TelemetryView:
    def __init__(self, sim: SiteSimulator) -> None:
        plan = sim.telemetry
        pairs = {(s.kind.value, s.metric) for s in FEATURE_METRICS.values()}
        kinds = np.array(plan.kind_dict, dtype=object)[plan.kind_code]
        metrics = np.array(plan.metric_dict, dtype=object)[plan.metric_code]
        self.keep = np.array([(k, m) in pairs for k, m in zip(kinds, metrics, strict=True)])
        devices = np.array(plan.device_dict, dtype=object)[plan.device_code]
        self.columns = {
            "device_id": pa.array(devices[self.keep].tolist(), pa.string()),
            "metric": pa.array(metrics[self.keep].tolist(), pa.string()),
            "kind": pa.array(kinds[self.keep].tolist(), pa.string()),
        }
        self.con = duckdb.connect()
        self.con.execute(
            "CREATE TABLE latest (device_id VARCHAR, metric VARCHAR, read_time TIMESTAMP, "
            "value DOUBLE, kind VARCHAR)"
        )

    def observe(self, sim: SiteSimulator) -> Observation:
        values, present = sim.telemetry.read(sim)
        keep = self.keep if present is None else self.keep & present
        now = datetime.fromtimestamp(sim.time_s, UTC).replace(tzinfo=None)
        sel = keep[self.keep]
        frame = pa.table(  # noqa: F841 - scanned by name below
            {
                "device_id": self.columns["device_id"].filter(pa.array(sel)),
                "metric": self.columns["metric"].filter(pa.array(sel)),
                "read_time": pa.array([now] * int(sel.sum()), pa.timestamp("us")),
                "value": pa.array(values[keep], pa.float64()),
                "kind": self.columns["kind"].filter(pa.array(sel)),
            }
        )
        self.con.execute("DELETE FROM latest")
        self.con.execute("INSERT INTO latest SELECT * FROM frame")
        return current_state(self.con, now, max_age_s=1.0)
