"""Live optimizer (issue 19 target): CPU seconds of one live proposal on the example site
(`LiveOptimizer.propose`: the state from the store's latest readings, the constrained
search with the serving model, the proposal and its `why` stored), target < 2 s.

Data: one read of every device of the example site from the simulator (through the real
simulated source, batched and written into a real Store), on a July afternoon. Model: a
small one trained on a 40-h exploration run of a 64-GPU site over the same days (timing,
not accuracy: the search evaluates the same number of candidates whatever the trees
learnt). CPU time is the process's (DuckDB's threads included), median of 5 rounds after a
warm-up round; the round's outcome is reported (a round refused as out of distribution
would be cheaper and is not counted).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.harness import Result
from collectors.batching import Batcher
from collectors.sources.simulated.source import SimulatedSource, SimulatedSourceConfig
from domain.contract import EventBatch, TelemetryBatch
from domain.site import EXAMPLE_SITE, load_site
from experiments.optimizer.dataset import explore, load_history, save_history
from ingest.store import Store
from simulator.model import SiteSimulator
from simulator.sitegen import synthetic_site
from twin.optimizer.live import LiveConfig, LiveOptimizer
from twin.optimizer.models import train
from twin.optimizer.recommendations import store_opener

START = datetime(2025, 7, 1, tzinfo=UTC)


def _model(root: Path) -> Path:
    import duckdb

    con = duckdb.connect(str(root / "history.duckdb"))
    df = explore(
        synthetic_site(64, racks_per_row=2),
        seed=11,
        start_s=START.timestamp(),
        hours=40,
        step_s=120.0,
        hold_s=720.0,
    )
    save_history(con, df)
    models = train(load_history(con), members=3)
    con.close()
    return models.save(root / "model.pkl")


def _fill(store: Store, at: datetime) -> datetime:
    """One read of the example site at wall-clock `at` (what ingest keeps in `latest`)."""
    site = load_site(EXAMPLE_SITE)
    sim = SiteSimulator(site, seed=11, start_time_s=(START + timedelta(hours=14)).timestamp())
    sim.step(60.0)
    src = SimulatedSource(SimulatedSourceConfig(site_file=EXAMPLE_SITE), simulator=sim)
    batches = Batcher("bench", site.site.id, 10.0).batches(src.snapshot(int(at.timestamp() * 1000)))
    store.write(
        [b for b in batches if isinstance(b, TelemetryBatch)],
        [b for b in batches if isinstance(b, EventBatch)],
        {},
    )
    return at


def run(quick: bool = False) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = _model(root)
        store = Store(root / "twin.duckdb")
        try:
            now = _fill(store, datetime.now(UTC)).replace(tzinfo=None)
            opt = LiveOptimizer(
                LiveConfig(site_id="sv1", model_path=model),
                store_opener(store.cursor),
                store.cursor,
            )
            opt.propose(now)  # warm-up: model load, DuckDB plans
            times, outcomes = [], set()
            for _ in range(3 if quick else 5):
                c0 = time.process_time()
                opt.propose(now)
                times.append(time.process_time() - c0)
                outcomes.add(opt.last_outcome)
        finally:
            store.close()
    cpu = statistics.median(times)
    counted = outcomes == {"recommended"}
    return [
        Result(
            "optimizer: one live proposal, example site",
            "CPU s per proposal",
            cpu,
            "< 2",
            (cpu < 2.0) if counted else None,
            note=f"outcome {sorted(o or '' for o in outcomes)}; median of {len(times)}",
        )
    ]
