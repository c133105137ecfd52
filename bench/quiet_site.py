"""Issue 26's quiet-site check: `dctwin demo --quiet-site` for N minutes shows no firing
alert (and its on-call receiver gets no page). Too long for CI; run by hand:

    python -m bench.quiet_site --minutes 10 [--history-hours 6]

Exit status 0 when nothing fired, 1 otherwise (the alerts that fired are printed).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from api.keys import DEMO_KEY
from dctwin.broker import free_port

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--history-hours", type=float, default=6.0)
    args = ap.parse_args(argv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="dctwin-quiet-"))
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    with open(work / "demo.out", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dctwin.cli.main", "demo", "--quiet-site"]
            + ["--port", str(port), "--workdir", str(work / "demo")]
            + ["--history-hours", str(args.history_hours)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            t_up = time.monotonic()
            while True:
                if proc.poll() is not None or time.monotonic() - t_up > 900:
                    print((work / "demo.out").read_text()[-3000:])
                    return 2
                try:
                    if httpx.get(f"{url}/v1/pue", headers=AUTH, timeout=2).json().get("value"):
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(1)
            print(f"demo up after {time.monotonic() - t_up:.0f} s; watching {args.minutes:g} min")
            fired: dict[str, dict] = {}
            end = time.monotonic() + args.minutes * 60
            while time.monotonic() < end:
                page = httpx.get(f"{url}/v1/alerts", params={"limit": 1000}, headers=AUTH)
                for a in page.json()["items"]:  # firing or resolved since the start
                    fired[a["fingerprint"]] = a
                time.sleep(10)
            pages = httpx.get(f"{url}/v1/oncall/pages", headers=AUTH).json()["pages"]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    for a in fired.values():
        print(f"{a['status']:9} {a['alertname']}: {a['annotations'].get('summary', '')}")
    print(f"{len(fired)} alerts, {len(pages)} on-call pages in {args.minutes:g} min")
    return 0 if not fired and not pages else 1


if __name__ == "__main__":
    sys.exit(main())
