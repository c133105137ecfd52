"""A fake NVML for machines without a GPU, shaped exactly like `pynvml` (nvidia-ml-py).

Same function names and parameter names, same constant values, the same exception
hierarchy (`NVMLError(code)` returns the `NVMLError_<Name>` subclass, e.g.
`NVMLError_GpuIsLost`), and ctypes structs with pynvml's field names (`c_nvmlUtilization_t`,
`c_nvmlMemory_t`, `c_nvmlEventData_t`, `c_nvmlFieldValue_t`, `c_nvmlViolationTime_t`);
device handles (MIG devices' too) are ctypes pointers like pynvml's `c_nvmlDevice_t`.
tests/test_nvml_source.py checks every name here against the installed pynvml, so the fake
cannot drift from the real API.

A `FakeNvml` instance stands in for the module: `NvmlSource(config, nvml_module=fake)`.
Tests change its `gpus` state, `inject_xid(...)` or mark a GPU `lost`. `FakeGpu()` is an
SXM module (HBM, 18 NVLinks, MIG capable but off); `pcie_gpu()` is a PCIe card that, like
the real one, answers NotSupported for NVLink, MIG, memory temperature and row remapping.
"""

# ruff: noqa: N801, N802, N803, N815, N816 - pynvml's names, kept as they are
from __future__ import annotations

import string
import time
from collections import deque
from ctypes import (
    POINTER,
    Structure,
    Union,
    c_double,
    c_int,
    c_int64,
    c_longlong,
    c_uint,
    c_uint32,
    c_ulong,
    c_ulonglong,
    c_ushort,
    pointer,
)
from dataclasses import dataclass, field

# -- constants (values as in pynvml) ------------------------------------------------------
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1

NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_VALUE_TYPE_UNSIGNED_SHORT = 6

NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL = 38
NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL = 45
NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL = 52
NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL = 59
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_FI_DEV_PCIE_COUNT_TX_BYTES = 197
NVML_FI_DEV_PCIE_COUNT_RX_BYTES = 198

NVML_PERF_POLICY_POWER = 0
NVML_PERF_POLICY_THERMAL = 1
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_NVLINK_ERROR_DL_REPLAY = 0
NVML_NVLINK_ERROR_DL_RECOVERY = 1
NVML_NVLINK_ERROR_DL_CRC_FLIT = 2
NVML_NVLINK_ERROR_DL_CRC_DATA = 3

nvmlClocksEventReasonGpuIdle = 0x0000000000000001
nvmlClocksEventReasonApplicationsClocksSetting = 0x0000000000000002
nvmlClocksEventReasonSwPowerCap = 0x0000000000000004
nvmlClocksEventReasonHwSlowdown = 0x0000000000000008
nvmlClocksEventReasonSyncBoost = 0x0000000000000010
nvmlClocksEventReasonSwThermalSlowdown = 0x0000000000000020
nvmlClocksEventReasonHwThermalSlowdown = 0x0000000000000040
nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x0000000000000080
nvmlClocksEventReasonDisplayClockSetting = 0x0000000000000100

nvmlEventTypeSingleBitEccError = 0x0000000000000001
nvmlEventTypeDoubleBitEccError = 0x0000000000000002
nvmlEventTypeXidCriticalError = 0x0000000000000008


# -- exceptions: the same generated hierarchy as pynvml -----------------------------------
class NVMLError(Exception):
    _valClassMapping: dict[int, type] = {}

    def __new__(cls, value):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return f"NVML Error with code {self.value}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = Exception.__hash__


def _error_classes() -> None:
    for name, val in list(globals().items()):
        if not name.startswith("NVML_ERROR_"):
            continue
        cls_name = "NVMLError_" + string.capwords(name.replace("NVML_ERROR_", ""), "_").replace(
            "_", ""
        )

        def new(cls, *args, _val=val):
            return NVMLError.__new__(cls, _val)

        cls = type(cls_name, (NVMLError,), {"__new__": new, "__module__": __name__})
        globals()[cls_name] = cls
        NVMLError._valClassMapping[val] = cls


_error_classes()


# -- structs (pynvml's field names) -------------------------------------------------------
class struct_c_nvmlDevice_t(Structure):
    # opaque in NVML; the fake keeps the GPU's index here, and for a MIG device handle its
    # MIG device index (-1: the whole GPU)
    _fields_ = [("index", c_uint), ("mig", c_int)]


c_nvmlDevice_t = POINTER(struct_c_nvmlDevice_t)


class struct_c_nvmlEventSet_t(Structure):
    _fields_ = [("id", c_uint)]


c_nvmlEventSet_t = POINTER(struct_c_nvmlEventSet_t)


class c_nvmlUtilization_t(Structure):
    _fields_ = [("gpu", c_uint), ("memory", c_uint)]


class c_nvmlMemory_t(Structure):
    _fields_ = [("total", c_ulonglong), ("free", c_ulonglong), ("used", c_ulonglong)]


class c_nvmlViolationTime_t(Structure):
    _fields_ = [("referenceTime", c_ulonglong), ("violationTime", c_ulonglong)]


class c_nvmlEventData_t(Structure):
    _fields_ = [
        ("device", c_nvmlDevice_t),
        ("eventType", c_ulonglong),
        ("eventData", c_ulonglong),
        ("gpuInstanceId", c_uint),
        ("computeInstanceId", c_uint),
    ]


class c_nvmlValue_t(Union):
    _fields_ = [
        ("dVal", c_double),
        ("uiVal", c_uint),
        ("ulVal", c_ulong),
        ("ullVal", c_ulonglong),
        ("sllVal", c_longlong),
        ("siVal", c_int),
        ("usVal", c_ushort),
    ]


class c_nvmlFieldValue_t(Structure):
    _fields_ = [
        ("fieldId", c_uint32),
        ("scopeId", c_uint32),
        ("timestamp", c_int64),
        ("latencyUsec", c_int64),
        ("valueType", c_uint),
        ("nvmlReturn", c_uint),
        ("value", c_nvmlValue_t),
    ]


NVLINK_TOTALS = (
    NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL,
    NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL,
    NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL,
    NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL,
)


@dataclass
class FakeGpu:
    """One GPU's state. None means the GPU does not support that reading (NotSupported)."""

    temp_c: int = 45
    mem_temp_c: int | None = 52
    power_mw: int = 351_250
    energy_mj: int = 3_512_847_123
    util_gpu: int = 87
    util_mem: int = 41
    mem_total: int = 80 * 2**30
    mem_used: int = 61 * 2**30 + 12345
    sm_clock_mhz: int = 1980
    mem_clock_mhz: int = 2619
    throttle: int = 0x4
    fan_pct: int | None = None  # SXM modules have no fan of their own
    ecc_corrected: int | None = 12
    ecc_uncorrected: int | None = 1
    remapped: tuple[int, int, int, int] | None = (3, 1, 0, 0)
    pcie_replay: int | None = 7
    nvlink: dict[int, int] | None = field(
        default_factory=lambda: {
            NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL: 2,
            NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL: 1,
            NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL: 5,
            NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL: 0,
        }
    )
    # issue 22: NVML at DCGM depth. None: NotSupported, as above.
    uuid: str | None = "GPU-6f5e4b3c-2a19-4c8d-9e7f-0a1b2c3d4e5f"
    serial: str | None = "1652823054321"
    board_part_number: str | None = "692-2G520-0200-000"
    name: str | None = "NVIDIA H100 80GB HBM3"
    vbios_version: str | None = "96.00.99.00.01"
    power_limit_mw: int | None = 700_000
    power_limit_default_mw: int | None = 700_000
    power_limit_enforced_mw: int | None = 650_000  # e.g. capped by a site controller
    violation_ns: dict[int, int] | None = field(
        default_factory=lambda: {
            NVML_PERF_POLICY_POWER: 12_345_678_000,
            NVML_PERF_POLICY_THERMAL: 4_321_000,
        }
    )
    pcie_tx_bytes: int | None = 10**12  # cumulative counters (NVML field values)
    pcie_rx_bytes: int | None = 3 * 10**12
    mig_mode: int | None = NVML_DEVICE_MIG_DISABLE
    max_mig_devices: int = 7
    mig: dict[int, tuple[int, int]] = field(default_factory=dict)  # MIG index -> (GI id, used)
    # NVLink link -> (active, {counter: value}); a link not in the dict is not present
    nvlink_links: dict[int, tuple[bool, dict[int, int]]] | None = field(
        default_factory=lambda: {
            link: (
                True,
                {
                    NVML_NVLINK_ERROR_DL_CRC_FLIT: link,
                    NVML_NVLINK_ERROR_DL_CRC_DATA: 2 * link,
                    NVML_NVLINK_ERROR_DL_REPLAY: 100 + link,
                    NVML_NVLINK_ERROR_DL_RECOVERY: 0,
                },
            )
            for link in range(18)
        }
    )
    events_supported: bool = True
    lost: bool = False
    fail: dict[str, int] = field(default_factory=dict)  # function name -> NVML error code
    field_fail: dict[int, int] = field(default_factory=dict)  # field id -> its nvmlReturn


def pcie_gpu(**over) -> FakeGpu:
    """A PCIe card (L40S-like): a fan, GDDR, no NVLink, no MIG, no memory temperature."""
    values: dict = {
        "name": "NVIDIA L40S",
        "board_part_number": "900-2G133-0080-000",
        "fan_pct": 35,
        "mem_temp_c": None,
        "remapped": None,
        "nvlink": None,
        "nvlink_links": None,
        "mig_mode": None,
        "power_limit_mw": 350_000,
        "power_limit_default_mw": 350_000,
        "power_limit_enforced_mw": 350_000,
    }
    values.update(over)
    return FakeGpu(**values)


class FakeNvml:
    """Stands in for the `pynvml` module (see the module docstring)."""

    def __init__(self, gpus: list[FakeGpu] | None = None, driver_loaded: bool = True) -> None:
        self.gpus = gpus if gpus is not None else [FakeGpu() for _ in range(8)]
        self.driver_loaded = driver_loaded
        self.driver_version = "570.124.06"
        self.time_us: int | None = None  # field-value timestamps; None: the real clock
        self.initialized = 0
        self.calls: dict[str, int] = {}
        self._handles = [pointer(struct_c_nvmlDevice_t(i, -1)) for i in range(len(self.gpus))]
        self._registered: dict[int, int] = {}  # gpu index -> event mask
        self._queue: deque[tuple[int, int, int]] = deque()  # (gpu, event type, data)

    # test controls
    def inject_xid(self, index: int, xid: int) -> None:
        self._queue.append((index, nvmlEventTypeXidCriticalError, xid))

    def _gpu(self, fn: str, handle, mig_ok: bool = False) -> FakeGpu:
        self.calls[fn] = self.calls.get(fn, 0) + 1
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if handle.contents.mig >= 0 and not mig_ok:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[handle.contents.index]
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if fn in gpu.fail:
            raise NVMLError(gpu.fail[fn])
        return gpu

    @staticmethod
    def _supported(value):
        if value is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return value

    # -- the pynvml API ------------------------------------------------------------------
    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        self.initialized -= 1

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        self._gpu("nvmlDeviceGetHandleByIndex", self._handles[index])
        return self._handles[index]

    def nvmlDeviceGetIndex(self, handle) -> int:
        return handle.contents.index

    def nvmlDeviceGetTemperature(self, handle, sensor) -> int:
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu("nvmlDeviceGetTemperature", handle).temp_c

    def nvmlDeviceGetPowerUsage(self, handle) -> int:
        return self._gpu("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:
        return self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj

    def nvmlDeviceGetUtilizationRates(self, handle) -> c_nvmlUtilization_t:
        g = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        return c_nvmlUtilization_t(g.util_gpu, g.util_mem)

    def nvmlDeviceGetMemoryInfo(self, handle, version=None) -> c_nvmlMemory_t:
        g = self._gpu("nvmlDeviceGetMemoryInfo", handle, mig_ok=True)
        if handle.contents.mig >= 0:
            if handle.contents.mig not in g.mig:
                raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)  # the instance was destroyed
            used = g.mig[handle.contents.mig][1]
            return c_nvmlMemory_t(10 * 2**30, 10 * 2**30 - used, used)
        return c_nvmlMemory_t(g.mem_total, g.mem_total - g.mem_used, g.mem_used)

    def nvmlDeviceGetClockInfo(self, handle, type) -> int:
        g = self._gpu("nvmlDeviceGetClockInfo", handle)
        return {NVML_CLOCK_SM: g.sm_clock_mhz, NVML_CLOCK_MEM: g.mem_clock_mhz}[type]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle).throttle

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", handle).throttle

    def nvmlDeviceGetFanSpeed(self, handle) -> int:
        return self._supported(self._gpu("nvmlDeviceGetFanSpeed", handle).fan_pct)

    def nvmlDeviceGetTotalEccErrors(self, handle, errorType, counterType) -> int:
        g = self._gpu("nvmlDeviceGetTotalEccErrors", handle)
        if counterType not in (NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self._supported(
            g.ecc_corrected if errorType == NVML_MEMORY_ERROR_TYPE_CORRECTED else g.ecc_uncorrected
        )

    def nvmlDeviceGetRemappedRows(self, device) -> tuple[int, int, int, int]:
        return self._supported(self._gpu("nvmlDeviceGetRemappedRows", device).remapped)

    def nvmlDeviceGetPcieReplayCounter(self, handle) -> int:
        return self._supported(self._gpu("nvmlDeviceGetPcieReplayCounter", handle).pcie_replay)

    def nvmlDeviceGetFieldValues(self, handle, fieldIds):
        g = self._gpu("nvmlDeviceGetFieldValues", handle)
        values = (c_nvmlFieldValue_t * len(fieldIds))()
        now_us = self.time_us if self.time_us is not None else int(time.time() * 1e6)
        pcie = {NVML_FI_DEV_PCIE_COUNT_TX_BYTES: g.pcie_tx_bytes}
        pcie[NVML_FI_DEV_PCIE_COUNT_RX_BYTES] = g.pcie_rx_bytes
        for i, fid in enumerate(fieldIds):
            values[i].fieldId = fid
            values[i].timestamp = now_us
            if fid in g.field_fail:
                values[i].nvmlReturn = g.field_fail[fid]
            elif pcie.get(fid) is not None:
                values[i].valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                values[i].value.ullVal = pcie[fid]
            elif fid == NVML_FI_DEV_MEMORY_TEMP and g.mem_temp_c is not None:
                values[i].valueType = NVML_VALUE_TYPE_UNSIGNED_INT
                values[i].value.uiVal = g.mem_temp_c
            elif fid in NVLINK_TOTALS and g.nvlink is not None and fid in g.nvlink:
                values[i].valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                values[i].value.ullVal = g.nvlink[fid]
            else:
                values[i].nvmlReturn = NVML_ERROR_NOT_SUPPORTED
        return values

    # issue 22: NVML at DCGM depth
    def nvmlSystemGetDriverVersion(self) -> str:
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        return self.driver_version

    def nvmlDeviceGetUUID(self, handle) -> str:
        return self._supported(self._gpu("nvmlDeviceGetUUID", handle).uuid)

    def nvmlDeviceGetSerial(self, handle) -> str:
        return self._supported(self._gpu("nvmlDeviceGetSerial", handle).serial)

    def nvmlDeviceGetBoardPartNumber(self, handle) -> str:
        g = self._gpu("nvmlDeviceGetBoardPartNumber", handle)
        return self._supported(g.board_part_number)

    def nvmlDeviceGetName(self, handle) -> str:
        return self._supported(self._gpu("nvmlDeviceGetName", handle).name)

    def nvmlDeviceGetVbiosVersion(self, handle) -> str:
        return self._supported(self._gpu("nvmlDeviceGetVbiosVersion", handle).vbios_version)

    def nvmlDeviceGetPowerManagementLimit(self, handle) -> int:
        g = self._gpu("nvmlDeviceGetPowerManagementLimit", handle)
        return self._supported(g.power_limit_mw)

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle) -> int:
        g = self._gpu("nvmlDeviceGetPowerManagementDefaultLimit", handle)
        return self._supported(g.power_limit_default_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle) -> int:
        g = self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle)
        return self._supported(g.power_limit_enforced_mw)

    def nvmlDeviceGetViolationStatus(self, device, perfPolicyType) -> c_nvmlViolationTime_t:
        g = self._gpu("nvmlDeviceGetViolationStatus", device)
        if g.violation_ns is None or perfPolicyType not in g.violation_ns:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return c_nvmlViolationTime_t(123, g.violation_ns[perfPolicyType])

    def nvmlDeviceGetNvLinkState(self, device, link) -> int:
        g = self._gpu("nvmlDeviceGetNvLinkState", device)
        if g.nvlink_links is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if link not in g.nvlink_links:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return int(g.nvlink_links[link][0])

    def nvmlDeviceGetNvLinkErrorCounter(self, device, link, counter) -> int:
        g = self._gpu("nvmlDeviceGetNvLinkErrorCounter", device)
        if g.nvlink_links is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if link not in g.nvlink_links:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self._supported(g.nvlink_links[link][1].get(counter))

    def nvmlDeviceGetMigMode(self, device) -> list[int]:
        g = self._gpu("nvmlDeviceGetMigMode", device)
        mode = self._supported(g.mig_mode)
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device) -> int:
        g = self._gpu("nvmlDeviceGetMaxMigDeviceCount", device)
        self._supported(g.mig_mode)
        return g.max_mig_devices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device, index):
        g = self._gpu("nvmlDeviceGetMigDeviceHandleByIndex", device)
        if self._supported(g.mig_mode) != NVML_DEVICE_MIG_ENABLE:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if index not in g.mig:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return pointer(struct_c_nvmlDevice_t(device.contents.index, index))

    def nvmlDeviceGetGpuInstanceId(self, device) -> int:
        g = self._gpu("nvmlDeviceGetGpuInstanceId", device, mig_ok=True)
        if device.contents.mig < 0:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)  # not a MIG device handle
        if device.contents.mig not in g.mig:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return g.mig[device.contents.mig][0]

    def nvmlEventSetCreate(self):
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        return pointer(struct_c_nvmlEventSet_t(1))

    def nvmlDeviceGetSupportedEventTypes(self, handle) -> int:
        g = self._gpu("nvmlDeviceGetSupportedEventTypes", handle)
        return (
            nvmlEventTypeXidCriticalError | nvmlEventTypeDoubleBitEccError
            if g.events_supported
            else 0
        )

    def nvmlDeviceRegisterEvents(self, handle, eventTypes, eventSet) -> None:
        g = self._gpu("nvmlDeviceRegisterEvents", handle)
        if not g.events_supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        i = handle.contents.index
        self._registered[i] = self._registered.get(i, 0) | eventTypes

    def nvmlEventSetWait(self, eventSet, timeoutms) -> c_nvmlEventData_t:
        self.calls["nvmlEventSetWait"] = self.calls.get("nvmlEventSetWait", 0) + 1
        while self._queue:
            index, etype, data = self._queue.popleft()
            if self._registered.get(index, 0) & etype:
                return c_nvmlEventData_t(self._handles[index], etype, data, 0, 0)
        raise NVMLError(NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, eventSet) -> None:
        self._registered.clear()


# the module's constants, exception classes and structs, reachable through an instance
for _name, _value in list(globals().items()):
    if _name.startswith(
        ("NVML_", "NVMLError", "nvmlEventType", "nvmlClocksEventReason", "c_nvml", "struct_c_nvml")
    ):
        setattr(FakeNvml, _name, _value)
