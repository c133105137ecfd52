"""NVML source: per-GPU telemetry and XID events through nvidia-ml-py (`pynvml`).

Reads every GPU of the node each interval: temperatures, power, the total-energy counter,
utilization, memory, clocks, throttle reasons (bitmask and one 0/1 flag per reason), fan,
ECC, remapped rows and the pending/failed remap flags, PCIe replays and throughput, NVLink
error totals, power limits, power/thermal violation time and MIG mode (each MIG device's
memory as `<gpu id>/mig<GPU instance id>`). Every `slow_interval_s` it also reads the
per-link NVLink error counters and the GPU's identity (UUID, serial, board part number),
sent as an `inventory` event when it first appears or changes. A reading a GPU does not
support (`NVMLError_NotSupported`) is skipped for that GPU from then on; the other
readings still go out. A GPU that reports
itself lost (XID 79 "fallen off the bus" and friends) becomes one `device_lost` event and
is left alone while the others keep being read. XID events come from NVML's event API and
are drained, without waiting, at each read.

The NVML module is injectable (`nvml_module=`) so that tests without a GPU can pass a fake
with the same API (tests/fake_pynvml.py); by default the real `pynvml` is imported lazily.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from collectors.base import Readings, now_ms, source_error_event
from domain.contract import (
    CONTROL_CHARS,
    GPU_CLOCK_EVENT_REASONS,
    GPU_NVLINK_COUNTERS,
    GPU_NVLINK_LINKS,
    MAX_ATTR_CHARS,
    AttrValue,
    Event,
    EventKind,
    Kind,
    Severity,
)
from domain.xids import CRITICAL_XID_CODES, XIDS, xid_info

log = logging.getLogger(__name__)

# XIDs that mean the GPU or its memory/links need attention now, and those normally
# caused by the application: views of the one catalogue (domain/xids.py)
CRITICAL_XIDS: dict[int, str] = {c: XIDS[c].meaning for c in CRITICAL_XID_CODES}
APPLICATION_XIDS: dict[int, str] = {
    c: x.meaning for c, x in XIDS.items() if x.cause == "application"
}


# issue 22: NVML at DCGM depth.
# Clock event reason -> its bit (nvmlClocksEventReason*; the same bits as DCGM's
# DCGM_CLOCKS_EVENT_REASON_*), in the order of GPU_CLOCK_EVENT_REASONS.
CLOCK_EVENT_BITS: dict[str, int] = dict(
    zip(GPU_CLOCK_EVENT_REASONS, (1 << b for b in range(9)), strict=True)
)
# NVLink counter (metric part) -> the nvmlNvLinkErrorCounter_t name in pynvml
NVLINK_COUNTER_NAMES: dict[str, str] = dict(
    zip(
        GPU_NVLINK_COUNTERS,
        (
            "NVML_NVLINK_ERROR_DL_CRC_FLIT",
            "NVML_NVLINK_ERROR_DL_CRC_DATA",
            "NVML_NVLINK_ERROR_DL_REPLAY",
            "NVML_NVLINK_ERROR_DL_RECOVERY",
        ),
        strict=True,
    )
)
# identity attr -> NVML call; read every slow_interval_s, sent as an inventory event
INVENTORY_CALLS: dict[str, str] = {
    "uuid": "nvmlDeviceGetUUID",
    "serial": "nvmlDeviceGetSerial",
    "board_part_number": "nvmlDeviceGetBoardPartNumber",
    "name": "nvmlDeviceGetName",
    "vbios_version": "nvmlDeviceGetVbiosVersion",
}
_CONTROL_RE = re.compile(CONTROL_CHARS)


def _attr_text(value: object) -> str:
    """An NVML string as an event attr: decoded, no control characters, bounded."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return _CONTROL_RE.sub("", text).strip()[:MAX_ATTR_CHARS]


def xid_severity(xid: int) -> tuple[Severity, str]:
    info = xid_info(xid)
    return info.severity, info.meaning


class NvmlSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["nvml"] = "nvml"
    name: str = "nvml"
    node_id: str = Field(description="site/hall/row/rack/node; GPU i is <node_id>/gpu<i>")
    gpus: list[int] | None = Field(None, description="NVML indices to read (default: all)")
    xid_events: bool = True
    lost_retry_s: float = Field(60.0, gt=0, description="how often a lost GPU is probed")
    slow_interval_s: float = Field(
        30.0,
        ge=0,
        description="identity (inventory event) and per-link NVLink error counters are "
        "read at most this often (0: every read)",
    )

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
        # a link index past the GPU's last link answers InvalidArgument
        self._no_link_errors = (*self._skip_errors, nv.NVMLError_InvalidArgument)
        self._not_found = getattr(nv, "NVMLError_NotFound", ())
        self.device_ids = {i: f"{config.node_id}/gpu{i}" for i in indices}
        self.handles: dict[int, Any] = {}
        self.lost: dict[int, float] = {}  # index -> monotonic time of the last probe
        self.unsupported: set[tuple[int, str]] = set()
        self._field_ids: dict[int, list[int]] = {}
        self._reported: set[tuple[int, str, str]] = set()
        self._pending: list[Event] = []
        self._slow_due: dict[int, float] = {}  # index -> monotonic time slow reads are due
        self._inventory: dict[int, dict[str, AttrValue]] = {}  # index -> last identity sent
        self._no_link: set[tuple[int, int]] = set()  # (index, link) without NVLink
        self._no_counter: set[tuple[int, int, int]] = set()  # (index, link, counter)
        self._pcie_last: dict[tuple[int, int], tuple[float, float]] = {}  # -> (bytes, s)
        try:
            self._driver_version: str | None = _attr_text(nv.nvmlSystemGetDriverVersion())
        except nv.NVMLError as exc:
            log.warning("nvmlSystemGetDriverVersion: %s", exc)
            self._driver_version = None
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

        def reasons(mask: int) -> list[tuple[str, float]]:
            flags = [
                (f"clock_event_{r}", float(bool(mask & b))) for r, b in CLOCK_EVENT_BITS.items()
            ]
            return [("throttle_reasons", mask), *flags]

        def throttle(h: Any) -> list[tuple[str, float]]:
            fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
            try:
                if fn is not None:
                    return reasons(fn(h))
            except getattr(nv, "NVMLError_FunctionNotFound", ()):  # driver older than 535
                pass
            return reasons(nv.nvmlDeviceGetCurrentClocksThrottleReasons(h))

        def ecc(err_type: int, metric: str) -> Reader:
            return lambda h: [
                (metric, nv.nvmlDeviceGetTotalEccErrors(h, err_type, nv.NVML_AGGREGATE_ECC))
            ]

        def remapped(h: Any) -> list[tuple[str, float]]:
            corr, unc, pending, failure = nv.nvmlDeviceGetRemappedRows(h)
            return [
                ("remapped_rows_correctable", corr),
                ("remapped_rows_uncorrectable", unc),
                ("row_remap_pending", float(bool(pending))),
                ("row_remap_failure", float(bool(failure))),
            ]

        def violation(policy: int, metric: str) -> tuple[str, Reader]:
            # violationTime: ns the clocks were held down by that policy, since driver load
            return metric, lambda h: [
                (metric, nv.nvmlDeviceGetViolationStatus(h, policy).violationTime / 1000.0)
            ]

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
            # issue 22: NVML at DCGM depth (NVML reports power limits in mW)
            one("power_limit_w", lambda h: nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0),
            one(
                "power_limit_default_w",
                lambda h: nv.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000.0,
            ),
            one("power_limit_enforced_w", lambda h: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0),
            violation(nv.NVML_PERF_POLICY_POWER, "power_violation_us"),
            violation(nv.NVML_PERF_POLICY_THERMAL, "thermal_violation_us"),
            ("mig", self._mig),
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
                source_error_event(
                    self.device_ids[i],
                    f"GPU {i} {what}: {exc}",
                    {"source": self.name, "reading": what},
                )
            )

    def _fields(self, i: int, h: Any) -> list[tuple[str, float]]:
        """Memory temperature, NVLink error totals and the PCIe byte counters in one
        nvmlDeviceGetFieldValues call."""
        nv = self.nvml
        pcie = {
            nv.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: "pcie_tx_bytes_per_s",
            nv.NVML_FI_DEV_PCIE_COUNT_RX_BYTES: "pcie_rx_bytes_per_s",
        }
        ids = self._field_ids.setdefault(
            i,
            [
                nv.NVML_FI_DEV_MEMORY_TEMP,
                nv.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL,
                nv.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL,
                nv.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL,
                nv.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
                *pcie,
            ],
        )
        if not ids:
            return []
        out: list[tuple[str, float]] = []
        nvlink: float | None = None
        keep = []
        for fv in nv.nvmlDeviceGetFieldValues(h, ids):
            # NOT_SUPPORTED, or INVALID_ARGUMENT from a driver older than the field id
            if fv.nvmlReturn in (nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_INVALID_ARGUMENT):
                continue  # dropped from later requests
            keep.append(fv.fieldId)
            if fv.nvmlReturn != nv.NVML_SUCCESS:
                exc = nv.NVMLError(fv.nvmlReturn)
                if isinstance(exc, self._lost_errors):
                    raise exc
                self._report_once(i, f"fields.{fv.fieldId}", exc)  # the other fields go on
                continue
            value = float(getattr(fv.value, _VALUE_MEMBER[fv.valueType]))
            if fv.fieldId == nv.NVML_FI_DEV_MEMORY_TEMP:
                out.append(("mem_temp_c", value))
            elif fv.fieldId in pcie:
                rate = self._pcie_rate(i, fv.fieldId, value, fv.timestamp)
                if rate is not None:
                    out.append((pcie[fv.fieldId], rate))
            else:
                nvlink = (nvlink or 0.0) + value
        self._field_ids[i] = keep
        if nvlink is not None:
            out.append(("nvlink_errors_total", nvlink))
        return out

    def _pcie_rate(self, i: int, field_id: int, count: float, stamp_us: int) -> float | None:
        """Bytes/s since the last read from a cumulative byte counter (DCGM reports the
        rate, DCGM_FI_PROF_PCIE_*_BYTES); None on the first read and when the counter
        went back (wrapped, or reset by a driver reload)."""
        t_s = stamp_us / 1e6 if stamp_us > 0 else time.time()
        last = self._pcie_last.get((i, field_id))
        self._pcie_last[(i, field_id)] = (count, t_s)
        if last is None or count < last[0] or t_s <= last[1]:
            return None
        return (count - last[0]) / (t_s - last[1])

    def _mig(self, h: Any) -> list[tuple[str, float]]:
        """MIG mode, and when on, the MIG devices' memory, keyed `mig<GPU instance id>/`
        (the instance id is stable while the layout stands; an index is not)."""
        nv = self.nvml
        current = nv.nvmlDeviceGetMigMode(h)[0]
        out: list[tuple[str, float]] = [("mig_mode", float(current == nv.NVML_DEVICE_MIG_ENABLE))]
        if current != nv.NVML_DEVICE_MIG_ENABLE:
            return out
        n = 0
        for index in range(nv.nvmlDeviceGetMaxMigDeviceCount(h)):
            try:
                mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, index)
            except self._not_found:  # no MIG device at this index
                continue
            gi = nv.nvmlDeviceGetGpuInstanceId(mig)
            n += 1
            with contextlib.suppress(*self._skip_errors):  # that device's memory: not shown
                out.append((f"mig{gi}/mem_used_bytes", nv.nvmlDeviceGetMemoryInfo(mig).used))
        out.append(("mig_devices", float(n)))
        return out

    def _nvlink_links(self, i: int, h: Any) -> list[tuple[str, float]]:
        """Per-link NVLink error counters of the active links. nvmlDeviceGetNvLinkErrorCounter
        per link and counter (what DCGM uses on drivers >= 520: the per-link field ids
        stop at link 11). A link NVML does not know is not asked again; a link that is
        down is asked again next time."""
        nv = self.nvml
        out: list[tuple[str, float]] = []
        for link in range(GPU_NVLINK_LINKS):
            if (i, link) in self._no_link:
                continue
            try:
                active = nv.nvmlDeviceGetNvLinkState(h, link)
            except self._no_link_errors:
                self._no_link.add((i, link))
                continue
            if not active:
                continue
            for name, const in NVLINK_COUNTER_NAMES.items():
                counter = getattr(nv, const)
                if (i, link, counter) in self._no_counter:
                    continue
                try:
                    value = nv.nvmlDeviceGetNvLinkErrorCounter(h, link, counter)
                except self._skip_errors:
                    self._no_counter.add((i, link, counter))
                    continue
                out.append((f"nvlink_l{link}_{name}_errors_total", value))
        return out

    def _read_inventory(self, i: int, h: Any) -> list[tuple[str, float]]:
        """Identity strings: an `inventory` event when they first appear or change (a GPU
        swapped under the same index, a VBIOS or driver update). Samples carry floats
        only, so identity travels as event attrs. A string the GPU lacks is None."""
        nv = self.nvml
        before = self._inventory.get(i, {})
        ident: dict[str, AttrValue] = {}
        for attr, fn in INVENTORY_CALLS.items():
            if (i, f"inventory.{attr}") in self.unsupported:
                ident[attr] = None
                continue
            try:
                ident[attr] = _attr_text(getattr(nv, fn)(h))
            except self._skip_errors:
                self.unsupported.add((i, f"inventory.{attr}"))
                ident[attr] = None
            except self._lost_errors:
                raise
            except nv.NVMLError as exc:  # keep what we knew; tell once
                self._report_once(i, f"inventory.{attr}", exc)
                ident[attr] = before.get(attr)
        ident["driver_version"] = self._driver_version
        if ident == before:
            return []
        self._inventory[i] = ident
        changed = [f"{k} {before.get(k)} -> {v}" for k, v in ident.items() if before.get(k) != v]
        self._pending.append(
            Event(
                device_id=self.device_ids[i],
                kind=EventKind.inventory,
                severity="info",
                read_time_ms=now_ms(),
                message=(
                    f"GPU {i}: {ident['name']} serial {ident['serial']} uuid {ident['uuid']}"
                    if not before
                    else f"GPU {i} identity changed: " + ", ".join(changed)
                ),
                attrs={"source": self.name, "gpu_index": i, **ident},
            )
        )
        return []

    def _read_gpu(self, i: int, h: Any, out: Readings) -> None:
        dev, t = self.device_ids[i], now_ms()
        readers = [*self._readers, ("fields", lambda h: self._fields(i, h))]
        if time.monotonic() >= self._slow_due.get(i, 0.0):
            self._slow_due[i] = time.monotonic() + self.config.slow_interval_s
            readers.append(("nvlink_links", lambda h: self._nvlink_links(i, h)))
            readers.append(("inventory", lambda h: self._read_inventory(i, h)))
        for what, reader in readers:
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
            for key, value in values:
                # "mig3/mem_used_bytes": a sub-device of this GPU (its MIG device)
                sub, _, metric = key.rpartition("/")
                out.add(Kind.gpu, self.rack, f"{dev}/{sub}" if sub else dev, metric, value, t)

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
            info = xid_info(xid)
            out.events.append(
                Event(
                    device_id=device_id,
                    kind=EventKind.xid,
                    severity=info.severity,
                    read_time_ms=now_ms(),
                    message=f"XID {xid}: {info.meaning}. Action: {info.action}",
                    attrs={
                        "xid": xid,
                        "gpu_index": index,
                        "source": self.name,
                        "cause": info.cause,
                    },
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
            self._slow_due.pop(i, None)  # re-read identity: a reset may come with a new board
            self._pcie_last = {k: v for k, v in self._pcie_last.items() if k[0] != i}
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
