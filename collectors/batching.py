"""Turn a pass of readings into wire batches: one per (kind, rack), events separately."""

from __future__ import annotations

from collections import defaultdict

from collectors.base import Readings, now_ms
from domain.contract import EventBatch, Kind, SampleColumns, TelemetryBatch


class Batcher:
    """Assigns per-collector sequence numbers so replays can be ordered and deduplicated."""

    def __init__(self, collector: str, site: str, interval_s: float, start_seq: int = 0) -> None:
        self.collector = collector
        self.site = site
        self.interval_s = interval_s
        self.seq = start_seq

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def batches(self, readings: Readings) -> list[TelemetryBatch | EventBatch]:
        groups: dict[tuple[Kind, str], list[int]] = defaultdict(list)
        for i, key in enumerate(zip(readings.kind, readings.rack, strict=True)):
            groups[key].append(i)
        sent = now_ms()
        out: list[TelemetryBatch | EventBatch] = []
        for (kind, rack), idx in groups.items():
            cols = SampleColumns.model_construct(
                device_id=[readings.device_id[i] for i in idx],
                metric=[readings.metric[i] for i in idx],
                value=[readings.value[i] for i in idx],
                read_time_ms=[readings.read_time_ms[i] for i in idx],
            )
            out.append(
                TelemetryBatch(
                    collector=self.collector,
                    kind=kind,
                    site=self.site,
                    rack=rack,
                    seq=self._next_seq(),
                    interval_s=self.interval_s,
                    sent_time_ms=sent,
                    samples=cols,
                )
            )
        if readings.events:
            by_rack: dict[str, list] = defaultdict(list)
            for ev in readings.events:
                parts = ev.device_id.split("/")
                by_rack[parts[3] if len(parts) > 4 else "facility"].append(ev)
            for rack, events in by_rack.items():
                out.append(
                    EventBatch(
                        collector=self.collector,
                        site=self.site,
                        rack=rack,
                        seq=self._next_seq(),
                        sent_time_ms=sent,
                        events=events,
                    )
                )
        return out
