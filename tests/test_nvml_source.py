"""NVML source against a fake NVML with pynvml's exact API, and against real NVML where a
GPU exists (`gpu` marker: skipped only when nvmlInit fails or no GPU is present)."""

from __future__ import annotations

import inspect

import pynvml
import pytest

from collectors.batching import Batcher
from collectors.sources import build_source
from collectors.sources.nvml.source import (
    CRITICAL_XIDS,
    NvmlError,
    NvmlSource,
    NvmlSourceConfig,
    xid_severity,
)
from domain.contract import METRICS, EventKind, Kind, decode, encode
from tests import fake_pynvml
from tests.fake_pynvml import FakeGpu, FakeNvml

NODE = "sv1/h1/row1/rk101/n01"


def source(fake: FakeNvml, **over) -> NvmlSource:
    return NvmlSource(NvmlSourceConfig(node_id=NODE, **over), nvml_module=fake)


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
        elif name.startswith(("NVML_", "nvmlEventType")):
            assert ours == real, name
        elif name.startswith("NVMLError_"):
            assert issubclass(real, pynvml.NVMLError)
            assert ours().value == real().value, name
            assert type(fake.NVMLError(ours().value)) is ours  # NVMLError(code) -> subclass
        elif name.startswith("c_nvml") and hasattr(ours, "_fields_"):  # not opaque handles
            assert [f[0] for f in ours._fields_] == [f[0] for f in real._fields_], name
    assert checked > 60
    for fn in ("nvmlDeviceGetFieldValues", "nvmlEventSetWait", "nvmlDeviceGetRemappedRows"):
        assert hasattr(fake, fn)


def test_reads_every_metric_of_every_gpu_exactly():
    gpus = [
        FakeGpu(temp_c=40 + i, power_mw=300_000 + 1234 * i, energy_mj=10**9 + i) for i in range(8)
    ]
    gpus[5].fan_pct = 33  # a PCIe card with a fan
    fake = FakeNvml(gpus)
    src = source(fake)
    r = src.read()
    got = by_key(r)
    assert set(r.kind) == {Kind.gpu} and set(r.rack) == {"rk101"}
    for i, g in enumerate(gpus):
        d = f"{NODE}/gpu{i}"
        expected = {
            "gpu_temp_c": g.temp_c,
            "mem_temp_c": g.mem_temp_c,
            "power_w": g.power_mw / 1000,
            "energy_mj": g.energy_mj,
            "util_gpu_pct": g.util_gpu,
            "util_mem_pct": g.util_mem,
            "mem_used_bytes": g.mem_used,
            "sm_clock_mhz": g.sm_clock_mhz,
            "mem_clock_mhz": g.mem_clock_mhz,
            "throttle_reasons": g.throttle,
            "ecc_corrected_total": g.ecc_corrected,
            "ecc_uncorrected_total": g.ecc_uncorrected,
            "remapped_rows_correctable": g.remapped[0],
            "remapped_rows_uncorrectable": g.remapped[1],
            "pcie_replay_total": g.pcie_replay,
            "nvlink_errors_total": sum(g.nvlink.values()),
        }
        if g.fan_pct is not None:
            expected["fan_speed_pct"] = g.fan_pct
        assert {m: v for (dd, m), v in got.items() if dd == d} == pytest.approx(expected), i
    assert set(METRICS[Kind.gpu]) == {m for _, m in got}  # every GPU metric has a reading
    decoded = [decode(encode(b)) for b in Batcher("n01", "sv1", 1.0).batches(r)]
    assert sum(len(b.samples) for b in decoded) == len(r)
    src.close()
    assert fake.initialized == 0


def test_not_supported_skips_only_that_field_and_is_not_asked_again():
    g = FakeGpu(
        mem_temp_c=None, ecc_corrected=None, ecc_uncorrected=None, remapped=None, nvlink=None
    )
    g.fail["nvmlDeviceGetPcieReplayCounter"] = fake_pynvml.NVML_ERROR_NOT_SUPPORTED
    fake = FakeNvml([g, FakeGpu()])
    src = source(fake)
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
    }
    assert {m for d, m in first if d.endswith("gpu1")} >= gpu0 | {
        "mem_temp_c",
        "nvlink_errors_total",
    }
    assert first.keys() == second.keys()
    assert first_read.events == []  # not supported is normal, not an error
    # unsupported readings are asked once per GPU, supported ones every read
    assert (
        fake.calls["nvmlDeviceGetPcieReplayCounter"] == calls["nvmlDeviceGetPcieReplayCounter"] + 1
    )  # gpu1 only
    assert fake.calls["nvmlDeviceGetPowerUsage"] == calls["nvmlDeviceGetPowerUsage"] + 2
    src.close()


def test_lost_gpu_becomes_one_device_lost_event_and_the_others_keep_reading():
    fake = FakeNvml([FakeGpu() for _ in range(4)])
    src = source(fake, lost_retry_s=3600)
    assert len(src.read()) == 4 * 16
    fake.gpus[2].lost = True  # fell off the bus
    r = src.read()
    lost = [e for e in r.events if e.kind == EventKind.device_lost]
    assert [(e.device_id, e.severity) for e in lost] == [(f"{NODE}/gpu2", "critical")]
    assert lost[0].attrs["nvml_error"] == fake_pynvml.NVML_ERROR_GPU_IS_LOST
    assert {d for d in r.device_id} == {f"{NODE}/gpu{i}" for i in (0, 1, 3)}
    again = src.read()
    assert again.events == [] and len(again) == 3 * 16
    src.close()


def test_lost_gpu_is_probed_and_comes_back():
    fake = FakeNvml([FakeGpu(), FakeGpu()])
    fake.gpus[1].lost = True
    src = source(fake, lost_retry_s=1e-9)  # probe at every read
    r = src.read()
    assert [e.kind for e in r.events] == [EventKind.device_lost]
    assert {d for d in r.device_id} == {f"{NODE}/gpu0"}
    fake.gpus[1].lost = False  # reset by the operator
    r = src.read()
    assert [(e.kind, e.device_id) for e in r.events] == [(EventKind.health_changed, f"{NODE}/gpu1")]
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
    assert r.events[0].message == "XID 79: GPU has fallen off the bus"
    assert len(r) == 4 * 16  # the read itself went on
    assert [e for e in src.read().events] == []
    decode(encode(Batcher("n01", "sv1", 1.0).batches(r)[-1]))  # events pass the contract
    src.close()


def test_critical_table_covers_the_documented_xids():
    for xid in (48, 63, 64, 74, 79, 92, 94, 95):
        assert xid in CRITICAL_XIDS and xid_severity(xid)[0] == "critical"


def test_other_nvml_errors_are_reported_once_and_retried():
    fake = FakeNvml([FakeGpu()])
    fake.gpus[0].fail["nvmlDeviceGetTotalEnergyConsumption"] = fake_pynvml.NVML_ERROR_UNKNOWN
    src = source(fake)
    r = src.read()
    assert [(e.kind, e.attrs["reading"]) for e in r.events] == [
        (EventKind.source_error, "energy_mj")
    ]
    assert "energy_mj" not in {m for m in r.metric} and len(r) == 15
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
