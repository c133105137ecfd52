"""NVML source against a fake NVML with pynvml's exact API, and against real NVML where a
GPU exists (`gpu` marker: skipped only when nvmlInit fails or no GPU is present)."""

from __future__ import annotations

import inspect

import pynvml
import pytest

from collectors.batching import Batcher
from collectors.sources import build_source
from collectors.sources.nvml.source import (
    CLOCK_EVENT_BITS,
    CRITICAL_XIDS,
    NVLINK_COUNTER_NAMES,
    NvmlError,
    NvmlSource,
    NvmlSourceConfig,
    xid_severity,
)
from domain.contract import (
    GPU_NVLINK_LINK_METRICS,
    METRICS,
    EventKind,
    Kind,
    decode,
    device_id_problem,
    encode,
)
from tests import fake_pynvml
from tests.fake_pynvml import FakeGpu, FakeNvml, pcie_gpu

NODE = "sv1/h1/row1/rk101/n01"


def source(fake: FakeNvml, **over) -> NvmlSource:
    return NvmlSource(NvmlSourceConfig(node_id=NODE, **over), nvml_module=fake)


def problems(r) -> list:
    """The events of a read other than the identity (`inventory`) sent at start."""
    return [e for e in r.events if e.kind != EventKind.inventory]


def by_key(r) -> dict[tuple[str, str], float]:
    return {(d, m): v for d, m, v in zip(r.device_id, r.metric, r.value, strict=True)}


def test_fake_mirrors_pynvml_names_values_signatures_and_structs():
    fake = FakeNvml()
    checked = 0
    for name in dir(FakeNvml):
        if not name.startswith(("nvml", "NVML", "c_nvml", "struct_c_nvml")):
            continue  # the fake's own test controls (inject_xid, gpus, calls)
        ours = getattr(fake, name)
        assert hasattr(pynvml, name), f"pynvml has no {name}"
        real = getattr(pynvml, name)
        checked += 1
        if name.startswith("nvml") and callable(ours) and not name.startswith("nvmlEventType"):
            assert list(inspect.signature(ours).parameters) == list(
                inspect.signature(real).parameters
            ), name
        elif name.startswith(("NVML_", "nvmlEventType", "nvmlClocksEventReason")):
            assert ours == real, name
        elif name.startswith("NVMLError_"):
            assert issubclass(real, pynvml.NVMLError)
            assert ours().value == real().value, name
            assert type(fake.NVMLError(ours().value)) is ours  # NVMLError(code) -> subclass
        elif name.startswith("c_nvml") and hasattr(ours, "_fields_"):  # not opaque handles
            assert [f[0] for f in ours._fields_] == [f[0] for f in real._fields_], name
    assert checked > 90
    for fn in ("nvmlDeviceGetFieldValues", "nvmlEventSetWait", "nvmlDeviceGetRemappedRows"):
        assert hasattr(fake, fn)
    # the source's own tables name real pynvml constants with the real values
    camel = {
        "gpu_idle": "GpuIdle",
        "applications_clocks_setting": "ApplicationsClocksSetting",
        "sw_power_cap": "SwPowerCap",
        "hw_slowdown": "HwSlowdown",
        "sync_boost": "SyncBoost",
        "sw_thermal_slowdown": "SwThermalSlowdown",
        "hw_thermal_slowdown": "HwThermalSlowdown",
        "hw_power_brake_slowdown": "HwPowerBrakeSlowdown",
        "display_clock_setting": "DisplayClockSetting",
    }
    for reason, bit in CLOCK_EVENT_BITS.items():
        assert getattr(pynvml, "nvmlClocksEventReason" + camel[reason]) == bit, reason
    for const in NVLINK_COUNTER_NAMES.values():
        assert getattr(fake, const) == getattr(pynvml, const)


SECOND = 1_000_000  # field-value timestamps are in microseconds


def expected_metrics(g: FakeGpu, links: bool = True, pcie_rate: float | None = None) -> dict:
    """What one read of a fake GPU must give (per-link NVLink counters when `links`)."""
    out: dict[str, float] = {
        "gpu_temp_c": g.temp_c,
        "power_w": g.power_mw / 1000,
        "energy_mj": g.energy_mj,
        "util_gpu_pct": g.util_gpu,
        "util_mem_pct": g.util_mem,
        "mem_used_bytes": g.mem_used,
        "sm_clock_mhz": g.sm_clock_mhz,
        "mem_clock_mhz": g.mem_clock_mhz,
        "throttle_reasons": g.throttle,
        **{f"clock_event_{r}": float(bool(g.throttle & b)) for r, b in CLOCK_EVENT_BITS.items()},
    }
    optional = {
        "mem_temp_c": g.mem_temp_c,
        "fan_speed_pct": g.fan_pct,
        "ecc_corrected_total": g.ecc_corrected,
        "ecc_uncorrected_total": g.ecc_uncorrected,
        "pcie_replay_total": g.pcie_replay,
        "power_limit_w": g.power_limit_mw and g.power_limit_mw / 1000,
        "power_limit_default_w": g.power_limit_default_mw and g.power_limit_default_mw / 1000,
        "power_limit_enforced_w": g.power_limit_enforced_mw and g.power_limit_enforced_mw / 1000,
        "mig_mode": g.mig_mode,
        "nvlink_errors_total": g.nvlink and sum(g.nvlink.values()),
        "pcie_tx_bytes_per_s": pcie_rate,
        "pcie_rx_bytes_per_s": pcie_rate,
    }
    out.update({m: v for m, v in optional.items() if v is not None})
    if g.remapped is not None:
        out.update(
            remapped_rows_correctable=g.remapped[0],
            remapped_rows_uncorrectable=g.remapped[1],
            row_remap_pending=float(bool(g.remapped[2])),
            row_remap_failure=float(bool(g.remapped[3])),
        )
    if g.violation_ns is not None:
        out["power_violation_us"] = g.violation_ns[fake_pynvml.NVML_PERF_POLICY_POWER] / 1000
        out["thermal_violation_us"] = g.violation_ns[fake_pynvml.NVML_PERF_POLICY_THERMAL] / 1000
    if links and g.nvlink_links is not None:
        for link, (active, counters) in g.nvlink_links.items():
            for name, const in NVLINK_COUNTER_NAMES.items():
                value = counters.get(getattr(fake_pynvml, const))
                if active and value is not None and link < 18:
                    out[f"nvlink_l{link}_{name}_errors_total"] = value
    return out


def test_reads_every_metric_of_every_gpu_exactly():
    gpus = [
        FakeGpu(temp_c=40 + i, power_mw=300_000 + 1234 * i, energy_mj=10**9 + i) for i in range(8)
    ]
    gpus[5].fan_pct = 33  # a PCIe card with a fan
    gpus[6].mig_mode = fake_pynvml.NVML_DEVICE_MIG_ENABLE
    gpus[6].mig = {0: (1, 5 * 2**30), 1: (2, 7 * 2**30)}
    fake = FakeNvml(gpus)
    fake.time_us = 1_700_000_000 * SECOND
    src = source(fake)
    first = src.read()
    fake.time_us += 2 * SECOND
    for g in gpus:  # 2 s later: 6 GB/s each way
        g.pcie_tx_bytes += 12 * 10**9
        g.pcie_rx_bytes += 12 * 10**9
    r = src.read()
    assert set(r.kind) == {Kind.gpu} and set(r.rack) == {"rk101"}
    for read, links, rate in ((first, True, None), (r, False, 6e9)):
        got = by_key(read)
        for i, g in enumerate(gpus):
            d = f"{NODE}/gpu{i}"
            expected = expected_metrics(g, links=links, pcie_rate=rate)
            if i == 6:
                expected["mig_devices"] = 2
            assert {m: v for (dd, m), v in got.items() if dd == d} == pytest.approx(expected), i
    got = by_key(r)
    assert got[(f"{NODE}/gpu6/mig1", "mem_used_bytes")] == 5 * 2**30
    assert got[(f"{NODE}/gpu6/mig2", "mem_used_bytes")] == 7 * 2**30
    # every GPU metric has a reading, per-link counters for all 18 links included
    assert set(METRICS[Kind.gpu]) == {m for _, m in by_key(first)} | {m for _, m in got}
    for read in (first, r):
        decoded = [decode(encode(b)) for b in Batcher("n01", "sv1", 1.0).batches(read)]
        assert sum(len(b.samples) for b in decoded if b.type == "telemetry") == len(read)
    src.close()
    assert fake.initialized == 0


def test_not_supported_skips_only_that_field_and_is_not_asked_again():
    g = FakeGpu(
        mem_temp_c=None,
        ecc_corrected=None,
        ecc_uncorrected=None,
        remapped=None,
        nvlink=None,
        nvlink_links=None,
        mig_mode=None,
        violation_ns=None,
        power_limit_mw=None,
        power_limit_default_mw=None,
        power_limit_enforced_mw=None,
        pcie_tx_bytes=None,
        pcie_rx_bytes=None,
        serial=None,
    )
    g.fail["nvmlDeviceGetPcieReplayCounter"] = fake_pynvml.NVML_ERROR_NOT_SUPPORTED
    fake = FakeNvml([g, FakeGpu()])
    src = source(fake, slow_interval_s=0)  # slow readings too on every read
    first_read = src.read()
    first = by_key(first_read)
    calls = dict(fake.calls)
    second = by_key(src.read())
    gpu0 = {m for d, m in first if d.endswith("gpu0")}
    assert gpu0 == {
        "gpu_temp_c",
        "power_w",
        "energy_mj",
        "util_gpu_pct",
        "util_mem_pct",
        "mem_used_bytes",
        "sm_clock_mhz",
        "mem_clock_mhz",
        "throttle_reasons",
        *(f"clock_event_{r}" for r in CLOCK_EVENT_BITS),
    }
    assert {m for d, m in first if d.endswith("gpu1")} >= gpu0 | {
        "mem_temp_c",
        "nvlink_errors_total",
        "power_violation_us",
        "power_limit_enforced_w",
        "mig_mode",
        "nvlink_l17_replay_errors_total",
    }
    pcie = {"pcie_tx_bytes_per_s", "pcie_rx_bytes_per_s"}
    assert second.keys() - first.keys() == {(f"{NODE}/gpu1", m) for m in pcie}
    assert first.keys() <= second.keys()
    # not supported is normal, not an error; the GPU without a serial still has its identity
    assert [e.kind for e in first_read.events] == [EventKind.inventory] * 2
    inv0 = first_read.events[0].attrs
    assert inv0["serial"] is None and inv0["uuid"] == g.uuid
    # unsupported readings are asked once per GPU, supported ones every read
    after = fake.calls
    assert after["nvmlDeviceGetPcieReplayCounter"] == calls["nvmlDeviceGetPcieReplayCounter"] + 1
    assert after["nvmlDeviceGetPowerUsage"] == calls["nvmlDeviceGetPowerUsage"] + 2
    # first read: both GPUs asked; then gpu1 only
    assert (calls["nvmlDeviceGetViolationStatus"], after["nvmlDeviceGetViolationStatus"]) == (4, 6)
    assert (calls["nvmlDeviceGetEnforcedPowerLimit"], after["nvmlDeviceGetEnforcedPowerLimit"]) == (
        2,
        3,
    )
    assert after["nvmlDeviceGetSerial"] == calls["nvmlDeviceGetSerial"] + 1  # gpu1 only
    # gpu0: 18 links asked once, never again; gpu1: 18 links each read
    assert calls["nvmlDeviceGetNvLinkState"] == 36
    assert after["nvmlDeviceGetNvLinkState"] == 36 + 18
    assert after["nvmlDeviceGetMigMode"] == calls["nvmlDeviceGetMigMode"] + 1
    src.close()


def test_pcie_gpu_without_nvlink_mig_or_violation_counters_reports_the_rest():
    """A PCIe card answers NotSupported for NVLink, MIG, memory temperature and row
    remapping, like the real one; here it lacks violation counters too."""
    card = pcie_gpu(violation_ns=None)
    fake = FakeNvml([card, FakeGpu()])
    fake.time_us = 5 * SECOND
    src = source(fake)
    first = src.read()
    fake.time_us += SECOND
    card.pcie_tx_bytes += 25 * 10**9
    card.pcie_rx_bytes += 10**9
    r = src.read()
    got = {m: v for (d, m), v in by_key(r).items() if d == f"{NODE}/gpu0"}
    assert got == pytest.approx(
        expected_metrics(card, links=False)
        | {"pcie_tx_bytes_per_s": 25e9, "pcie_rx_bytes_per_s": 1e9}
    )
    assert got["fan_speed_pct"] == 35 and got["power_limit_w"] == 350
    assert not any(m.startswith(("nvlink", "mig", "row_remap", "power_viol")) for m in got)
    assert [e.kind for e in first.events + r.events] == [EventKind.inventory] * 2
    assert first.events[0].attrs["name"] == "NVIDIA L40S"
    src.close()


def test_clock_event_flags_limits_violations_and_remap_flags():
    g = FakeGpu(
        throttle=fake_pynvml.nvmlClocksEventReasonSwPowerCap
        | fake_pynvml.nvmlClocksEventReasonHwThermalSlowdown
        | fake_pynvml.nvmlClocksEventReasonDisplayClockSetting,
        remapped=(9, 2, 1, 0),
        violation_ns={
            fake_pynvml.NVML_PERF_POLICY_POWER: 7_000_000_000,
            fake_pynvml.NVML_PERF_POLICY_THERMAL: 1_500,
        },
        power_limit_mw=600_000,
        power_limit_default_mw=700_000,
        power_limit_enforced_mw=550_500,
    )
    src = source(FakeNvml([g]))
    got = {m: v for (_, m), v in by_key(src.read()).items()}
    flags = {m: v for m, v in got.items() if m.startswith("clock_event_")}
    assert flags == {
        **{f"clock_event_{r}": 0.0 for r in CLOCK_EVENT_BITS},
        "clock_event_sw_power_cap": 1.0,
        "clock_event_hw_thermal_slowdown": 1.0,
        "clock_event_display_clock_setting": 1.0,
    }
    assert got["throttle_reasons"] == 0x4 | 0x40 | 0x100
    assert (got["row_remap_pending"], got["row_remap_failure"]) == (1.0, 0.0)
    assert got["power_violation_us"] == 7_000_000  # NVML ns -> us, as DCGM
    assert got["thermal_violation_us"] == 1.5
    assert (got["power_limit_w"], got["power_limit_default_w"]) == (600.0, 700.0)
    assert got["power_limit_enforced_w"] == 550.5
    src.close()


def test_nvlink_per_link_counters_skip_absent_and_down_links():
    g = FakeGpu()
    assert g.nvlink_links is not None
    g.nvlink_links = {k: v for k, v in g.nvlink_links.items() if k < 12}  # an A100: 12 links
    g.nvlink_links[3] = (False, g.nvlink_links[3][1])  # link 3 is down
    del g.nvlink_links[5][1][fake_pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA]  # not on this link
    g.nvlink_links[7][1][fake_pynvml.NVML_NVLINK_ERROR_DL_REPLAY] = 2**40
    fake = FakeNvml([g])
    src = source(fake, slow_interval_s=0)
    got = {m: v for (_, m), v in by_key(src.read()).items() if m.startswith("nvlink_l")}
    assert got == {m: v for m, v in expected_metrics(g).items() if m.startswith("nvlink_l")}
    assert {m for m in got} == {
        f"nvlink_l{n}_{c}_errors_total"
        for n in range(12)
        for c in ("crc_flit", "crc_data", "replay", "recovery")
        if n != 3 and (n, c) != (5, "crc_data")
    }
    assert got["nvlink_l7_replay_errors_total"] == 2**40
    assert got["nvlink_l11_crc_flit_errors_total"] == 11
    calls = dict(fake.calls)
    g.nvlink_links[3] = (True, g.nvlink_links[3][1])  # link 3 trained again
    got2 = {m for (_, m) in by_key(src.read()) if m.startswith("nvlink_l")}
    assert "nvlink_l3_replay_errors_total" in got2
    # links 12..17 answered InvalidArgument once and are not asked again
    assert fake.calls["nvmlDeviceGetNvLinkState"] - calls["nvmlDeviceGetNvLinkState"] == 12
    # 4 counters x 11 active links + 3 on link 5, then link 3 joins
    assert calls["nvmlDeviceGetNvLinkErrorCounter"] == 11 * 4  # the 11 active links
    assert set(GPU_NVLINK_LINK_METRICS) >= got2
    src.close()


def test_field_value_errors_are_per_field():
    g = FakeGpu()
    g.field_fail = {
        fake_pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES: fake_pynvml.NVML_ERROR_INVALID_ARGUMENT,
        fake_pynvml.NVML_FI_DEV_MEMORY_TEMP: fake_pynvml.NVML_ERROR_UNKNOWN,
    }
    fake = FakeNvml([g, FakeGpu()])
    src = source(fake)
    r1, r2 = src.read(), src.read()
    got = {m for d, m in by_key(r2) if d == f"{NODE}/gpu0"}
    # a field id the driver does not know (older driver) is dropped; the others go on
    assert "pcie_tx_bytes_per_s" not in got and "pcie_rx_bytes_per_s" in got
    assert "nvlink_errors_total" in got and "mem_temp_c" not in got
    assert [(e.kind, e.attrs["reading"]) for e in problems(r1) + problems(r2)] == [
        (EventKind.source_error, f"fields.{fake_pynvml.NVML_FI_DEV_MEMORY_TEMP}")
    ]
    g.field_fail = {fake_pynvml.NVML_FI_DEV_MEMORY_TEMP: fake_pynvml.NVML_ERROR_GPU_IS_LOST}
    lost = [e for e in src.read().events if e.kind == EventKind.device_lost]
    assert [e.device_id for e in lost] == [f"{NODE}/gpu0"]
    src.close()


def test_slow_readings_wait_for_slow_interval():
    fake = FakeNvml([FakeGpu()])
    src = source(fake)  # default slow_interval_s = 30
    first = by_key(src.read())
    second = by_key(src.read())
    assert any(m.startswith("nvlink_l") for _, m in first)
    assert not any(m.startswith("nvlink_l") for _, m in second)
    assert "nvlink_errors_total" in {m for _, m in second}  # the totals: every read
    assert fake.calls["nvmlDeviceGetUUID"] == 1
    src.close()


def test_mig_devices_are_sub_devices_of_their_gpu():
    g = FakeGpu(mig_mode=fake_pynvml.NVML_DEVICE_MIG_ENABLE)
    g.mig = {0: (1, 2**30), 3: (13, 3 * 2**30)}  # index -> (GPU instance id, memory used)
    fake = FakeNvml([g])
    src = source(fake)
    r = src.read()
    got = by_key(r)
    gpu = f"{NODE}/gpu0"
    assert got[(gpu, "mig_mode")] == 1 and got[(gpu, "mig_devices")] == 2
    assert got[(f"{gpu}/mig1", "mem_used_bytes")] == 2**30
    assert got[(f"{gpu}/mig13", "mem_used_bytes")] == 3 * 2**30
    assert {d for d in r.device_id} == {gpu, f"{gpu}/mig1", f"{gpu}/mig13"}
    for d in set(r.device_id):  # the rack segment is there: the contract takes them
        assert device_id_problem(d, "sv1", "rk101") is None
    decoded = [decode(encode(b)) for b in Batcher("n01", "sv1", 1.0).batches(r)]
    assert sum(len(b.samples) for b in decoded if b.type == "telemetry") == len(r)
    del g.mig[3]  # the instance was destroyed
    got = by_key(src.read())
    assert got[(gpu, "mig_devices")] == 1 and (f"{gpu}/mig13", "mem_used_bytes") not in got
    g.mig_mode = fake_pynvml.NVML_DEVICE_MIG_DISABLE
    got = by_key(src.read())
    assert got[(gpu, "mig_mode")] == 0 and (gpu, "mig_devices") not in got
    src.close()


def test_inventory_event_at_start_and_when_identity_changes():
    gpus = [FakeGpu(serial=f"16528230543{i}", uuid=f"GPU-{i:08x}-aaaa") for i in range(2)]
    gpus[1].name = "NVIDIA\x00 H100\n80GB"  # control characters never reach the contract
    fake = FakeNvml(gpus)
    src = source(fake, slow_interval_s=0)
    r = src.read()
    inv = [e for e in r.events if e.kind == EventKind.inventory]
    assert [(e.device_id, e.severity) for e in inv] == [
        (f"{NODE}/gpu0", "info"),
        (f"{NODE}/gpu1", "info"),
    ]
    assert inv[0].attrs == {
        "source": "nvml",
        "gpu_index": 0,
        "uuid": "GPU-00000000-aaaa",
        "serial": "165282305430",
        "board_part_number": "692-2G520-0200-000",
        "name": "NVIDIA H100 80GB HBM3",
        "vbios_version": "96.00.99.00.01",
        "driver_version": "570.124.06",
    }
    assert inv[1].attrs["name"] == "NVIDIA H10080GB"
    assert "serial 165282305430" in inv[0].message
    assert src.read().events == []  # unchanged: nothing to say
    gpus[0].serial = "1652823099999"  # board swapped under the same index
    gpus[0].uuid = "GPU-ffffffff-bbbb"
    changed = src.read().events
    assert [e.device_id for e in changed] == [f"{NODE}/gpu0"]
    assert changed[0].attrs["serial"] == "1652823099999"
    assert "serial 165282305430 -> 1652823099999" in changed[0].message
    batches = Batcher("n01", "sv1", 1.0).batches(r)
    assert [e.kind for b in batches if b.type == "events" for e in decode(encode(b)).events] == [
        "inventory",
        "inventory",
    ]
    # a transient error keeps the known value and is reported once
    gpus[1].fail["nvmlDeviceGetVbiosVersion"] = fake_pynvml.NVML_ERROR_UNKNOWN
    events = src.read().events
    assert [(e.kind, e.attrs["reading"]) for e in events] == [
        (EventKind.source_error, "inventory.vbios_version")
    ]
    src.close()


def test_lost_gpu_becomes_one_device_lost_event_and_the_others_keep_reading():
    fake = FakeNvml([FakeGpu() for _ in range(4)])
    src = source(fake, lost_retry_s=3600)
    src.read()
    per_gpu = len(src.read()) // 4
    fake.gpus[2].lost = True  # fell off the bus
    r = src.read()
    lost = [e for e in r.events if e.kind == EventKind.device_lost]
    assert [(e.device_id, e.severity) for e in lost] == [(f"{NODE}/gpu2", "critical")]
    assert lost[0].attrs["nvml_error"] == fake_pynvml.NVML_ERROR_GPU_IS_LOST
    assert {d for d in r.device_id} == {f"{NODE}/gpu{i}" for i in (0, 1, 3)}
    again = src.read()
    assert again.events == [] and len(again) == 3 * per_gpu
    src.close()


def test_lost_gpu_is_probed_and_comes_back():
    fake = FakeNvml([FakeGpu(), FakeGpu()])
    fake.gpus[1].lost = True
    src = source(fake, lost_retry_s=1e-9)  # probe at every read
    r = src.read()
    assert [e.kind for e in problems(r)] == [EventKind.device_lost]
    assert {d for d in r.device_id} == {f"{NODE}/gpu0"}
    fake.gpus[1].lost = False  # reset by the operator
    r = src.read()
    assert [(e.kind, e.device_id) for e in r.events] == [
        (EventKind.health_changed, f"{NODE}/gpu1"),
        (EventKind.inventory, f"{NODE}/gpu1"),  # its identity is read again at once
    ]
    assert f"{NODE}/gpu1" in set(r.device_id)
    src.close()


def test_xid_events_with_severity_from_the_critical_table():
    gpus = [FakeGpu() for _ in range(4)]
    gpus[2].events_supported = False  # e.g. a vGPU: no event registration
    fake = FakeNvml(gpus)
    src = source(fake)
    fake.inject_xid(3, 79)
    fake.inject_xid(1, 13)
    fake.inject_xid(0, 48)
    fake.inject_xid(2, 94)  # not registered: NVML does not deliver it
    fake.inject_xid(1, 999)
    r = src.read()
    xids = [(e.device_id, e.attrs["xid"], e.severity) for e in r.events if e.kind == EventKind.xid]
    assert xids == [
        (f"{NODE}/gpu3", 79, "critical"),
        (f"{NODE}/gpu1", 13, "info"),
        (f"{NODE}/gpu0", 48, "critical"),
        (f"{NODE}/gpu1", 999, "warning"),
    ]
    assert r.events[0].message.startswith("XID 79: GPU has fallen off the bus. Action: the GPU is gone")
    assert {d for d in r.device_id} == {f"{NODE}/gpu{i}" for i in range(4)}  # the read went on
    assert [e for e in src.read().events] == []
    decode(encode(Batcher("n01", "sv1", 1.0).batches(r)[-1]))  # events pass the contract
    src.close()


def test_xid_severity_comes_from_the_one_catalogue():
    # issue 21: the collector, the failure features and the alert rules share domain/xids.py
    for xid in (48, 62, 64, 74, 79, 94, 95, 119, 120, 140):
        assert xid in CRITICAL_XIDS and xid_severity(xid)[0] == "critical"
    for xid in (61, 63, 68, 92):  # worth a ticket, not a page
        assert xid not in CRITICAL_XIDS and xid_severity(xid)[0] == "warning"
    for xid in (13, 31, 43):  # the application's fault
        assert xid_severity(xid)[0] == "info"
    assert xid_severity(999)[0] == "warning"  # unknown codes are not dropped


def test_other_nvml_errors_are_reported_once_and_retried():
    fake = FakeNvml([FakeGpu()])
    fake.gpus[0].fail["nvmlDeviceGetTotalEnergyConsumption"] = fake_pynvml.NVML_ERROR_UNKNOWN
    src = source(fake)
    r = src.read()
    assert [(e.kind, e.attrs["reading"]) for e in problems(r)] == [
        (EventKind.source_error, "energy_mj")
    ]
    assert "energy_mj" not in {m for m in r.metric} and "power_w" in set(r.metric)
    assert src.read().events == []
    del fake.gpus[0].fail["nvmlDeviceGetTotalEnergyConsumption"]
    assert "energy_mj" in set(src.read().metric)
    src.close()


def test_setup_errors_are_clear():
    with pytest.raises(NvmlError, match="nvmlInit failed"):
        source(FakeNvml(driver_loaded=False))
    fake = FakeNvml([FakeGpu(), FakeGpu()])
    with pytest.raises(NvmlError, match=r"NVML sees 2 GPU\(s\); no index \[5\]"):
        source(fake, gpus=[0, 5])
    assert fake.initialized == 0
    with pytest.raises(ValueError, match=r"sources\[1\] \(nvml\): node_id: .*site/hall/row"):
        build_source({"type": "nvml", "node_id": "sv1/rk101"}, 1)


def test_subset_of_gpus():
    fake = FakeNvml([FakeGpu() for _ in range(8)])
    src = source(fake, gpus=[1, 6])
    assert {d for d in src.read().device_id} == {f"{NODE}/gpu1", f"{NODE}/gpu6"}
    src.close()


# -- real NVML -----------------------------------------------------------------------------
@pytest.fixture
def real_gpus() -> int:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver: {exc}")
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    if count == 0:
        pytest.skip("NVML sees no GPU")
    return count


@pytest.mark.gpu
def test_real_nvml_reads_every_gpu(real_gpus):
    src = build_source({"type": "nvml", "node_id": NODE}, 0)
    try:
        first = src.read()
        second = src.read()
    finally:
        src.close()
    for r in (first, second):
        got = by_key(r)
        for i in range(real_gpus):
            d = f"{NODE}/gpu{i}"
            for metric in (
                "gpu_temp_c",
                "power_w",
                "energy_mj",
                "util_gpu_pct",
                "mem_used_bytes",
                "sm_clock_mhz",
            ):
                assert (d, metric) in got, (d, metric)
            assert 0 < got[(d, "gpu_temp_c")] < 120
            assert 0 < got[(d, "power_w")] < 2000
        assert not [e for e in r.events if e.kind == EventKind.device_lost]
        decode(encode(Batcher("n01", "sv1", 1.0).batches(r)[0]))
    e0 = by_key(first)[(f"{NODE}/gpu0", "energy_mj")]
    assert by_key(second)[(f"{NODE}/gpu0", "energy_mj")] >= e0  # a monotonic counter


@pytest.mark.gpu
def test_real_nvml_dcgm_depth_fields(real_gpus, capsys):
    """issue 22's readings on real NVML: each may be NotSupported on a given GPU (PCIe
    cards have no NVLink, MIG needs A100/H100-class parts), so the test prints what NVML
    returned and checks only what it did return, plus what every datacenter GPU has."""
    import time

    src = build_source({"type": "nvml", "node_id": NODE, "slow_interval_s": 0}, 0)
    try:
        first = src.read()
        time.sleep(0.5)  # the PCIe byte rates need two reads
        second = src.read()
    finally:
        src.close()
    got = by_key(first) | by_key(second)
    inventory = {e.device_id: e.attrs for e in first.events if e.kind == EventKind.inventory}
    with capsys.disabled():
        for i in range(real_gpus):
            d = f"{NODE}/gpu{i}"
            print(f"\n{d} inventory: {inventory.get(d)}")
            for (dev, m), v in sorted(got.items()):
                if dev.startswith(d) and m not in ("gpu_temp_c", "power_w", "energy_mj"):
                    print(f"  {dev.removeprefix(d) or '.'} {m} = {v}")
        problems_seen = [e for e in first.events + second.events if e.kind != EventKind.inventory]
        print("other events:", [(e.kind, e.message) for e in problems_seen])
    for i in range(real_gpus):
        d = f"{NODE}/gpu{i}"
        attrs = inventory[d]  # every GPU has an identity; UUIDs start GPU-
        assert str(attrs["uuid"]).startswith("GPU-") and attrs["driver_version"]
        mine = {m: v for (dev, m), v in got.items() if dev == d}
        for r in CLOCK_EVENT_BITS:
            assert mine[f"clock_event_{r}"] in (0.0, 1.0)
        mask = int(mine["throttle_reasons"])
        assert all(mine[f"clock_event_{r}"] == bool(mask & b) for r, b in CLOCK_EVENT_BITS.items())
        for m in ("power_limit_w", "power_limit_default_w", "power_limit_enforced_w"):
            if m in mine:
                assert 10 <= mine[m] <= 5000, (m, mine[m])
        for m in ("row_remap_pending", "row_remap_failure", "mig_mode"):
            if m in mine:
                assert mine[m] in (0.0, 1.0), m
    for r in (first, second):
        for b in Batcher("n01", "sv1", 1.0).batches(r):
            decode(encode(b))  # every reading and event passes the contract
