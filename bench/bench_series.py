"""Series queries, bytes on disk and the server's memory, side by side with VictoriaMetrics
(issue 24).

One store holds 36 h of every emitted metric of every device of the example site, one
sample a minute, maintained as the server maintains it (bench/series_data.py): the last
24 h are 12 h of a day-compacted run, 11 h of hour runs and the current hour in
per-minute runs, the steady state's layout. VictoriaMetrics (Debian `victoria-metrics`,
`apt-get install -y victoria-metrics`) is given the same samples (`/api/v1/import`),
then flushed and merged. Figures, each next to its target and VM's:

- a 24 h, 1-minute series of one GPU metric (min/max/avg/last/count): median in-process
  (`ingest.history.query_series`) and through HTTP `/v1/series` (`bench/api_server.py`,
  the app as `dctwin serve` configures it), against VM's `/api/v1/query_range` with
  step=60s of `aggr_over_time` of the same five aggregates (nocache=1);
- bytes on disk per stored sample (the DuckDB file after a checkpoint, rollups included;
  VM's data directory after force_flush + force_merge);
- the API server's peak RSS over that store (VmHWM), after the series queries and a
  few live-view ticks.

`--memory` measures the server's peak RSS alone (no VictoriaMetrics, no series timings);
`--memory --serve` that of `dctwin serve` itself, every background service running.
`DCTWIN_BENCH_SERIES_DB=path` reuses a store built earlier by this bench (full size):
the build takes minutes. `--quick` uses every 8th device (fewer rows per run: the
series figures are then optimistic) and fewer repetitions. The machine's load average
is printed with each figure: on a busy machine the timings are not the acceptance
figures.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from bench.api_server import start_server
from bench.harness import Result
from bench.series_data import T0, db_bytes, fill_history, site_series
from dctwin.broker import free_port, stop_process, wait_for_port
from domain.site import EXAMPLE_SITE, load_site
from ingest.history import query_series
from ingest.store import Store

VM_BIN = "/usr/bin/victoria-metrics"
HOURS = 36
METRIC = "gpu_temp_c"


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _iso(t: datetime) -> str:
    return t.isoformat() + "Z"


class VictoriaMetrics:
    """A single-node VictoriaMetrics over a temporary data directory."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                VM_BIN,
                f"-storageDataPath={data}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-retentionPeriod=100y",  # the bench's data is dated 2025
                "-search.latencyOffset=0s",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port, 60)
        self.http = httpx.Client(base_url=self.base, timeout=600)

    def import_jsonl(self, path: Path) -> None:
        with path.open("rb") as f:
            self.http.post("/api/v1/import", content=f).raise_for_status()
        self.http.get("/internal/force_flush").raise_for_status()

    def merge(self) -> None:
        self.http.get("/internal/force_merge").raise_for_status()
        last, stable = -1, 0
        while stable < 3:  # the merge runs in the background: wait for the size to settle
            time.sleep(1.0)
            size = _dir_bytes(self.data / "data")
            stable = stable + 1 if size == last else 0
            last = size

    def close(self) -> None:
        self.http.close()
        stop_process(self.proc)


def _export_for_vm(store: Store, out: Path) -> None:
    """One JSON line per series in VM's import format, from the stored samples."""
    store.con.execute("SET memory_limit = '4GB'")  # lists of every series at once
    store.cursor().execute(f"""COPY (
        SELECT {{'__name__': metric, 'device': device_id}} AS metric,
               list(value ORDER BY read_time) AS "values",
               list(epoch_ms(read_time) ORDER BY read_time) AS timestamps
        FROM samples GROUP BY device_id, metric) TO '{out}' (FORMAT JSON)""")
    store.con.execute("SET memory_limit = '512MB'")


def run(quick: bool = False) -> list[Result]:
    results: list[Result] = []
    if not Path(VM_BIN).exists():
        return [
            Result(
                "series/storage vs VictoriaMetrics",
                "skipped",
                0.0,
                ok=False,
                note="VictoriaMetrics absent: apt-get install -y victoria-metrics",
            )
        ]
    site = load_site(EXAMPLE_SITE)
    series = site_series(site)
    if quick:
        keep = sorted(set(series["device_id"].to_pylist()))[::8]
        series = series.filter(pc.is_in(series["device_id"], pa.array(keep)))
    repeat = 15 if quick else 40
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "series.duckdb"
        t = time.perf_counter()
        if prebuilt := os.environ.get("DCTWIN_BENCH_SERIES_DB"):
            # a store this bench built before (same HOURS, full size): saves the build
            shutil.copy(prebuilt, db)
            store = Store(db)
            n_samples = store.cursor().execute("SELECT count(*) FROM samples").fetchall()[0][0]
            end = T0 + timedelta(hours=HOURS)
        else:
            store = Store(db)
            n_samples, end = fill_history(store, series, HOURS)
        build_s = time.perf_counter() - t
        store.con.execute("CHECKPOINT")
        start = end - timedelta(hours=24)
        gpus = series.filter(pc.equal(series["metric"], METRIC))["device_id"].to_pylist()
        gpu = gpus[len(gpus) // 2]
        cur = store.cursor()
        df = query_series(cur, gpu, METRIC, start, end, 60)
        dctwin_bytes = db_bytes(db)
        # the cold tier's format (ingest/downsampling.py, Retention.cold_dir): raw samples
        # sorted by series, Parquet zstd
        cold = Path(tmp) / "cold.parquet"
        store.con.execute("SET memory_limit = '2GB'")  # the sort, once
        cur.execute(f"""COPY (SELECT * FROM samples ORDER BY device_id, metric, read_time)
            TO '{cold}' (FORMAT PARQUET, COMPRESSION ZSTD, ROW_GROUP_SIZE 1000000)""")
        store.con.execute("SET memory_limit = '512MB'")
        cold_bytes = cold.stat().st_size
        cold.unlink()
        block, used = cur.execute(
            "SELECT block_size, used_blocks FROM pragma_database_size()"
        ).fetchall()[0]

        vm = VictoriaMetrics(Path(tmp) / "vm")
        try:
            jsonl = Path(tmp) / "vm.jsonl"
            _export_for_vm(store, jsonl)
            vm.import_jsonl(jsonl)
            jsonl.unlink()
            vm.merge()
            q = {
                "query": "aggr_over_time(('min_over_time', 'max_over_time', 'avg_over_time', "
                f"'last_over_time', 'count_over_time'), {METRIC}{{device=\"{gpu}\"}}[60s])",
                "start": _iso(start + timedelta(minutes=1)),
                "end": _iso(end),
                "step": "60s",
                "nocache": "1",
            }
            got = vm.http.get("/api/v1/query_range", params=q).json()
            vm_points = len(got["data"]["result"][0]["values"]) if got["data"]["result"] else 0

            # interleaved: dctwin in-process, VM, in rounds
            ours, theirs = [], []
            for _ in range(3):
                ours.append(
                    _median_ms(lambda: query_series(cur, gpu, METRIC, start, end, 60), repeat)
                )
                theirs.append(
                    _median_ms(lambda: vm.http.get("/api/v1/query_range", params=q), repeat)
                )
            store.close()
            med, vm_med = statistics.median(ours), statistics.median(theirs)
            results.append(
                Result(
                    "24 h 1-minute series, one GPU metric, in-process",
                    "median ms",
                    med,
                    "<= 2 and <= VM",
                    med <= 2 and med <= vm_med,
                    baseline=vm_med,
                    note=f"baseline: VictoriaMetrics query_range (HTTP, 5 aggregates, "
                    f"{vm_points} points); dctwin {df.height} points; {len(series):,} series, "
                    f"{n_samples:,} samples; {_load()}",
                )
            )

            # through HTTP: the app in its own process, as `dctwin serve` configures it
            proc, port, token = start_server(db, Path(tmp) / "keys.duckdb", subprocess.DEVNULL, 120)
            try:
                params = {
                    "id": gpu,
                    "metric": METRIC,
                    "start": _iso(start),
                    "end": _iso(end),
                    "step": "60",
                }
                with httpx.Client(
                    base_url=f"http://127.0.0.1:{port}",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                ) as api:
                    body = api.get("/v1/series", params=params)
                    body.raise_for_status()
                    api_points = len(body.json()["points"])
                    ours, theirs = [], []
                    for _ in range(3):
                        ours.append(
                            _median_ms(lambda: api.get("/v1/series", params=params), repeat)
                        )
                        theirs.append(
                            _median_ms(lambda: vm.http.get("/api/v1/query_range", params=q), repeat)
                        )
                    rss, rss_now, status = _server_memory(api, proc.pid)
            finally:
                stop_process(proc)
            med, vm_med = statistics.median(ours), statistics.median(theirs)
            results.append(
                Result(
                    "24 h 1-minute series, one GPU metric, HTTP /v1/series",
                    "median ms",
                    med,
                    "<= 5 and <= VM",
                    med <= 5 and med <= vm_med,
                    baseline=vm_med,
                    note=f"baseline: VictoriaMetrics, same run; {api_points} points; {_load()}",
                )
            )
            vm_rss = _status_mb(vm.proc.pid, "VmHWM")
        finally:
            vm.close()  # a clean stop writes every in-memory part
        vm_bytes = _dir_bytes(Path(tmp) / "vm")
        per, vm_per = dctwin_bytes / n_samples, vm_bytes / n_samples
        results.append(
            Result(
                f"bytes on disk per stored sample ({HOURS} h, rollups included)",
                "bytes/sample",
                per,
                "<= VM",
                per <= vm_per,
                baseline=vm_per,
                note=f"dctwin file {dctwin_bytes / 1e6:.0f} MB ({block * used / 1e6:.0f} MB in "
                f"used blocks), VictoriaMetrics {vm_bytes / 1e6:.1f} MB after force_merge and "
                f"a clean stop; {n_samples:,} samples; build {build_s:.0f} s",
            )
        )
        results.append(
            Result(
                "bytes per sample in the Parquet cold tier (raw samples only)",
                "bytes/sample",
                cold_bytes / n_samples,
                baseline=vm_per,
                note=f"{cold_bytes / 1e6:.0f} MB; sorted by series, zstd; baseline: VM",
            )
        )
        results.append(_rss_result(rss, rss_now, status, vm_rss))
    shutil.rmtree(Path(tmp), ignore_errors=True)
    return results


RSS_TARGET_MB = 600.0


def _server_memory(api: httpx.Client, pid: int) -> tuple[float, float, str]:
    """(peak RSS MB, RSS now MB, anomaly status) of the server once the anomaly model's
    first fit (12 h of history, the big allocation) has scored, or after 10 minutes."""
    deadline = time.monotonic() + 600
    status = ""
    while time.monotonic() < deadline:
        status = api.get("/v1/anomalies", params={"limit": 1}).json()["status"]
        if status.startswith("scored"):
            break
        time.sleep(2.0)
    time.sleep(3.0)  # a few more live-view ticks
    return _status_mb(pid, "VmHWM"), _status_mb(pid, "VmRSS"), status


def _rss_result(rss: float, rss_now: float, status: str, vm_rss: float | None) -> Result:
    met = rss <= RSS_TARGET_MB
    return Result(
        f"API server peak RSS, example site, {HOURS} h of history",
        "peak RSS MB",
        rss,
        f"<= {RSS_TARGET_MB:.0f}",
        met,
        baseline=vm_rss,
        note=f"target {RSS_TARGET_MB:.0f} MB {'met' if met else 'NOT met'}; RSS at the end "
        f"{rss_now:.0f} MB; anomaly service: {status}; {_load()}"
        + ("" if vm_rss is None else "; baseline: VictoriaMetrics' peak RSS (VmHWM)"),
    )


def _memory_store(tmp: Path) -> Path:
    """The memory figures' store in `tmp`: a copy of DCTWIN_BENCH_SERIES_DB, else built."""
    db = tmp / "series.duckdb"
    if prebuilt := os.environ.get("DCTWIN_BENCH_SERIES_DB"):
        shutil.copy(prebuilt, db)
    else:
        store = Store(db)
        fill_history(store, site_series(load_site(EXAMPLE_SITE)), HOURS)
        store.close()
    return db


def run_memory() -> list[Result]:
    """The server's memory alone (`--memory`): no VictoriaMetrics, no series timings.

    Over the store of DCTWIN_BENCH_SERIES_DB (copied; built first if unset), the server as
    `dctwin serve` configures its memory (DCTWIN_DUCKDB_MEMORY_LIMIT,
    DCTWIN_ANOMALY_FIT_MAX_SAMPLES), read as in the full run."""
    with tempfile.TemporaryDirectory() as tmp:
        db = _memory_store(Path(tmp))
        proc, port, token = start_server(db, Path(tmp) / "keys.duckdb", subprocess.DEVNULL, 120)
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ) as api:
                rss, rss_now, status = _server_memory(api, proc.pid)
        finally:
            stop_process(proc)
    return [_rss_result(rss, rss_now, status, None)]


def run_serve_memory() -> list[Result]:
    """`dctwin serve` itself (`--memory --serve`): every background service it runs (ingest
    from a real broker, twin, live view, anomaly, failure risk, optimizer, capacity,
    alerts), over the same store. Its peak RSS (VmHWM) once the anomaly service has scored
    and `/v1/failure-risk` answers, plus 20 s of steady running. The `--memory` figure
    above is the API server of `bench/api_server.py` (twin, live view, anomaly service):
    a subset of this one."""
    from api.keys import KeyStore
    from dctwin.broker import DevBroker

    with tempfile.TemporaryDirectory() as tmp, DevBroker() as broker:
        db = _memory_store(Path(tmp))
        keys = Path(tmp) / "keys.duckdb"
        _, token = KeyStore(keys).create("bench", "viewer")
        port = free_port()
        env = dict(os.environ) | {
            "DCTWIN_DB_PATH": str(db),
            "DCTWIN_KAFKA_BOOTSTRAP": broker.bootstrap,
            "DCTWIN_API_PORT": str(port),
            "DCTWIN_APIKEY_DB": str(keys),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "dctwin.cli.main", "serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=tmp,
        )
        try:
            wait_for_port("127.0.0.1", port, 180)
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            ) as api:
                deadline = time.monotonic() + 900
                status, risk = "", 0
                while time.monotonic() < deadline:
                    status = api.get("/v1/anomalies", params={"limit": 1}).json()["status"]
                    risk = api.get("/v1/failure-risk").status_code
                    if status.startswith("scored") and risk == 200:
                        break
                    time.sleep(2.0)
                time.sleep(20.0)  # steady running: ticks, rescoring, a proposal round
                rss, rss_now = _status_mb(proc.pid, "VmHWM"), _status_mb(proc.pid, "VmRSS")
        finally:
            stop_process(proc)
    met = rss <= RSS_TARGET_MB
    return [
        Result(
            f"dctwin serve peak RSS, example site, {HOURS} h of history",
            "peak RSS MB",
            rss,
            f"<= {RSS_TARGET_MB:.0f}",
            met,
            note=f"target {RSS_TARGET_MB:.0f} MB {'met' if met else 'NOT met'}; RSS after "
            f"20 s more {rss_now:.0f} MB; anomaly service: {status}; /v1/failure-risk "
            f"{risk}; {_load()}",
        )
    ]


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


if __name__ == "__main__":
    from bench.harness import print_table

    if "--memory" in sys.argv:
        print_table(run_serve_memory() if "--serve" in sys.argv else run_memory())
    else:
        print_table(run(quick="--quick" in sys.argv))
