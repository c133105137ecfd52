"""NVML source: per-GPU telemetry and XID events through nvidia-ml-py (`pynvml`).

Reads every GPU of the node each interval: temperatures, power, the total-energy counter,
utilization, memory, clocks, throttle reasons, fan, ECC, remapped rows, PCIe replays and
NVLink error totals. A reading a GPU does not support (`NVMLError_NotSupported`) is
skipped for that GPU from then on; the other readings still go out. A GPU that reports
itself lost (XID 79 "fallen off the bus" and friends) becomes one `device_lost` event and
is left alone while the others keep being read. XID events come from NVML's event API and
are drained, without waiting, at each read.

The NVML module is injectable (`nvml_module=`) so that tests without a GPU can pass a fake
with the same API (tests/fake_pynvml.py); by default the real `pynvml` is imported lazily.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from collectors.base import Readings, now_ms
from domain.contract import Event, EventKind, Kind, Severity

log = logging.getLogger(__name__)

# XIDs that mean the GPU or its memory/links need attention now (NVIDIA's XID catalog).
CRITICAL_XIDS: dict[int, str] = {
    48: "double-bit ECC error",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping recorded",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
}
# XIDs normally caused by the application, not the hardware: informational.
APPLICATION_XIDS: dict[int, str] = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup after a previous error",
}


def xid_severity(xid: int) -> tuple[Severity, str]:
    if xid in CRITICAL_XIDS:
        return "critical", CRITICAL_XIDS[xid]
    if xid in APPLICATION_XIDS:
        return "info", APPLICATION_XIDS[xid]
    return "warning", "see NVIDIA's XID catalog"


class NvmlSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["nvml"] = "nvml"
    name: str = "nvml"
    node_id: str = Field(description="site/hall/row/rack/node; GPU i is <node_id>/gpu<i>")
    gpus: list[int] | None = Field(None, description="NVML indices to read (default: all)")
    xid_events: bool = True
    lost_retry_s: float = Field(60.0, gt=0, description="how often a lost GPU is probed")

    @field_validator("node_id")
    @classmethod
    def _five_parts(cls, v: str) -> str:
        parts = v.split("/")
        if len(parts) != 5 or not all(parts):
            raise ValueError(f"expected site/hall/row/rack/node, got {v!r}")
        return v


class NvmlError(RuntimeError):
    pass


Reader = Callable[[Any], list[tuple[str, float]]]


class NvmlSource:
    def __init__(self, config: NvmlSourceConfig, nvml_module: Any = None) -> None:
        if nvml_module is None:
            import pynvml  # lazy: only GPU nodes need the driver library

            nvml_module = pynvml
        self.nvml = nv = nvml_module
        self.config = config
        self.name = config.name
        self.rack = config.node_id.split("/")[3]
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise NvmlError(f"nvmlInit failed: {exc} (is the NVIDIA driver loaded?)") from exc
        self._initialized = True
        count = nv.nvmlDeviceGetCount()
        indices = config.gpus if config.gpus is not None else list(range(count))
        missing = [i for i in indices if not 0 <= i < count]
        if missing:
            self.close()
            raise NvmlError(f"gpus: NVML sees {count} GPU(s); no index {missing}")
        self._lost_errors = tuple(
            getattr(nv, n)
            for n in ("NVMLError_GpuIsLost", "NVMLError_GpuNotFound", "NVMLError_ResetRequired")
            if hasattr(nv, n)
        )
        self._skip_errors = tuple(
            getattr(nv, n)
            for n in ("NVMLError_NotSupported", "NVMLError_FunctionNotFound")
            if hasattr(nv, n)
        )
        self.device_ids = {i: f"{config.node_id}/gpu{i}" for i in indices}
        self.handles: dict[int, Any] = {}
        self.lost: dict[int, float] = {}  # index -> monotonic time of the last probe
        self.unsupported: set[tuple[int, str]] = set()
        self._field_ids: dict[int, list[int]] = {}
        self._reported: set[tuple[int, str, str]] = set()
        self._pending: list[Event] = []
        for i in indices:
            try:
                self.handles[i] = nv.nvmlDeviceGetHandleByIndex(i)
            except self._lost_errors as exc:
                self._mark_lost(i, exc)
        self._readers = self._make_readers()
        self._event_set = self._register_xids() if config.xid_events else None

    # -- setup -------------------------------------------------------------------------
    def _make_readers(self) -> list[tuple[str, Reader]]:
        nv = self.nvml

        def util(h: Any) -> list[tuple[str, float]]:
            u = nv.nvmlDeviceGetUtilizationRates(h)
            return [("util_gpu_pct", u.gpu), ("util_mem_pct", u.memory)]

        def throttle(h: Any) -> list[tuple[str, float]]:
            fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
            try:
                if fn is not None:
                    return [("throttle_reasons", fn(h))]
            except getattr(nv, "NVMLError_FunctionNotFound", ()):  # driver older than 535
                pass
            return [("throttle_reasons", nv.nvmlDeviceGetCurrentClocksThrottleReasons(h))]

        def ecc(err_type: int, metric: str) -> Reader:
            return lambda h: [
                (metric, nv.nvmlDeviceGetTotalEccErrors(h, err_type, nv.NVML_AGGREGATE_ECC))
            ]

        def remapped(h: Any) -> list[tuple[str, float]]:
            corr, unc, _pending, _failure = nv.nvmlDeviceGetRemappedRows(h)
            return [("remapped_rows_correctable", corr), ("remapped_rows_uncorrectable", unc)]

        def one(metric: str, fn: Callable[[Any], float]) -> tuple[str, Reader]:
            return metric, lambda h: [(metric, fn(h))]

        return [
            one("gpu_temp_c", lambda h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            one("power_w", lambda h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),  # NVML: mW
            one("energy_mj", nv.nvmlDeviceGetTotalEnergyConsumption),
            ("util", util),
            one("mem_used_bytes", lambda h: nv.nvmlDeviceGetMemoryInfo(h).used),
            one("sm_clock_mhz", lambda h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            one("mem_clock_mhz", lambda h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            ("throttle_reasons", throttle),
            one("fan_speed_pct", nv.nvmlDeviceGetFanSpeed),
            (
                "ecc_corrected_total",
                ecc(nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, "ecc_corrected_total"),
            ),
            (
                "ecc_uncorrected_total",
                ecc(nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, "ecc_uncorrected_total"),
            ),
            ("remapped_rows", remapped),
            one("pcie_replay_total", nv.nvmlDeviceGetPcieReplayCounter),
        ]

    def _register_xids(self) -> Any:
        nv = self.nvml
        try:
            event_set = nv.nvmlEventSetCreate()
        except nv.NVMLError as exc:
            log.warning("NVML events unavailable, no XID events: %s", exc)
            return None
        for i, h in self.handles.items():
            try:
                if nv.nvmlDeviceGetSupportedEventTypes(h) & nv.nvmlEventTypeXidCriticalError:
                    nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, event_set)
            except self._skip_errors:
                log.warning("GPU %d: XID events not supported", i)
            except self._lost_errors as exc:
                self._mark_lost(i, exc)
        return event_set

    # -- reading -----------------------------------------------------------------------
    def _mark_lost(self, i: int, exc: Exception) -> None:
        self.handles.pop(i, None)
        self.lost[i] = time.monotonic()
        self._pending.append(
            Event(
                device_id=self.device_ids[i],
                kind=EventKind.device_lost,
                severity="critical",
                read_time_ms=now_ms(),
                message=f"GPU {i} lost: {exc}",
                attrs={"source": self.name, "nvml_error": int(getattr(exc, "value", -1))},
            )
        )

    def _report_once(self, i: int, what: str, exc: Exception) -> None:
        key = (i, what, str(exc))
        if key not in self._reported:  # one event per distinct failure, not per interval
            self._reported.add(key)
            self._pending.append(
                Event(
                    device_id=self.device_ids[i],
                    kind=EventKind.source_error,
                    severity="warning",
                    read_time_ms=now_ms(),
                    message=f"GPU {i} {what}: {exc}",
                    attrs={"source": self.name, "reading": what},
                )
            )

    def _fields(self, i: int, h: Any) -> list[tuple[str, float]]:
        """Memory temperature and NVLink error totals in one nvmlDeviceGetFieldValues call."""
        nv = self.nvml
        ids = self._field_ids.setdefault(
            i,
            [
                nv.NVML_FI_DEV_MEMORY_TEMP,
                nv.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL,
                nv.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL,
                nv.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL,
                nv.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
            ],
        )
        if not ids:
            return []
        out: list[tuple[str, float]] = []
        nvlink: float | None = None
        keep = []
        for fv in nv.nvmlDeviceGetFieldValues(h, ids):
            if fv.nvmlReturn == nv.NVML_ERROR_NOT_SUPPORTED:
                continue  # dropped from later requests
            keep.append(fv.fieldId)
            if fv.nvmlReturn != nv.NVML_SUCCESS:
                raise nv.NVMLError(fv.nvmlReturn)
            value = float(getattr(fv.value, _VALUE_MEMBER[fv.valueType]))
            if fv.fieldId == nv.NVML_FI_DEV_MEMORY_TEMP:
                out.append(("mem_temp_c", value))
            else:
                nvlink = (nvlink or 0.0) + value
        self._field_ids[i] = keep
        if nvlink is not None:
            out.append(("nvlink_errors_total", nvlink))
        return out

    def _read_gpu(self, i: int, h: Any, out: Readings) -> None:
        dev, t = self.device_ids[i], now_ms()
        for what, reader in [*self._readers, ("fields", lambda h: self._fields(i, h))]:
            if (i, what) in self.unsupported:
                continue
            try:
                values = reader(h)
            except self._lost_errors as exc:
                self._mark_lost(i, exc)
                return
            except self._skip_errors:
                self.unsupported.add((i, what))
                continue
            except self.nvml.NVMLError as exc:
                self._report_once(i, what, exc)
                continue
            for metric, value in values:
                out.add(Kind.gpu, self.rack, dev, metric, value, t)

    def _drain_xids(self, out: Readings) -> None:
        nv = self.nvml
        for _ in range(1024):  # bounded: a storm must not stall the read
            try:
                data = nv.nvmlEventSetWait(self._event_set, 0)
            except nv.NVMLError_Timeout:
                return
            except nv.NVMLError as exc:
                log.warning("NVML event wait failed: %s", exc)
                return
            if not data.eventType & nv.nvmlEventTypeXidCriticalError:
                continue
            xid = int(data.eventData)
            try:
                index = nv.nvmlDeviceGetIndex(data.device)
                device_id = self.device_ids.get(index, f"{self.config.node_id}/gpu{index}")
            except nv.NVMLError:
                index, device_id = -1, self.config.node_id
            severity, meaning = xid_severity(xid)
            out.events.append(
                Event(
                    device_id=device_id,
                    kind=EventKind.xid,
                    severity=severity,
                    read_time_ms=now_ms(),
                    message=f"XID {xid}: {meaning}",
                    attrs={"xid": xid, "gpu_index": index, "source": self.name},
                )
            )

    def _probe_lost(self) -> None:
        nv = self.nvml
        for i, last in list(self.lost.items()):
            if time.monotonic() - last < self.config.lost_retry_s:
                continue
            self.lost[i] = time.monotonic()
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)
            except nv.NVMLError:
                continue
            del self.lost[i]
            self.handles[i] = h
            self._pending.append(
                Event(
                    device_id=self.device_ids[i],
                    kind=EventKind.health_changed,
                    severity="info",
                    read_time_ms=now_ms(),
                    message=f"GPU {i} answers again",
                    attrs={"source": self.name},
                )
            )

    def read(self) -> Readings:
        out = Readings()
        if self._event_set is not None:
            self._drain_xids(out)
        self._probe_lost()
        for i, h in list(self.handles.items()):
            self._read_gpu(i, h, out)
        out.events.extend(self._pending)
        self._pending = []
        return out

    def close(self) -> None:
        nv = self.nvml
        if getattr(self, "_event_set", None) is not None:
            try:
                nv.nvmlEventSetFree(self._event_set)
            except nv.NVMLError as exc:
                log.debug("nvmlEventSetFree: %s", exc)
            self._event_set = None
        if getattr(self, "_initialized", False):
            self._initialized = False
            try:
                nv.nvmlShutdown()
            except nv.NVMLError as exc:
                log.debug("nvmlShutdown: %s", exc)


# nvmlFieldValue_t.valueType -> the member of the value union that holds it
_VALUE_MEMBER = {
    0: "dVal",
    1: "uiVal",
    2: "ulVal",
    3: "ullVal",
    4: "sllVal",
    5: "siVal",
    6: "usVal",
}


# plugin entry points (collectors/sources/__init__.py)
CONFIG_MODEL = NvmlSourceConfig
SOURCE_CLASS = NvmlSource
