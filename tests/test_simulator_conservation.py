"""Energy and heat add up: over a simulated hour the facility meter equals IT energy plus
every modeled loss plus cooling energy (0.1 %); in steady state the heat the loops and the
air remove equals the heat produced (1 %). Checked on what the devices report."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.air import AIR_CP_KJ_KG_K, AIR_DENSITY_KG_M3
from simulator.model import SiteSimulator
from tests.simtools import JAN, JUL, Recorder, small_site

SITE = small_site(256)


def counter_delta(rec: Recorder, devices: list[str], metric: str) -> float:
    return float(sum(rec.series(d, metric)[-1] - rec.series(d, metric)[0] for d in devices))


@pytest.mark.parametrize("start,climate", [(JUL, "hot-humid"), (JAN, "temperate")])
def test_facility_energy_is_it_plus_losses_plus_cooling_over_an_hour(start, climate):
    """Variable workload (training jobs, inference) with a PSU failing mid-hour."""
    sim = SiteSimulator(
        SITE,
        seed=11,
        start_time_s=start,
        climate=climate,
        faults="psu_aging@any:onset=10m,fail_after=30m",
    )
    rec = Recorder(sim)
    rec.run(10 / 3600, 10.0)  # first read: the counters' starting point
    ledger0 = dict(sim.ledger_kwh)
    rec.run(1.0, 10.0)
    led = {k: v - ledger0[k] for k, v in sim.ledger_kwh.items()}
    lay = sim.layout
    meter = {m.role.value: SITE.meter_id(m) for m in SITE.meters}
    facility = counter_delta(rec, [meter["facility_input"]], "energy_kwh")
    plant = counter_delta(rec, [meter["cooling_plant"]], "energy_kwh")
    ups_out = counter_delta(rec, [meter["ups_output"]], "energy_kwh")
    it = counter_delta(rec, lay.psu_ids, "energy_kwh")  # PSU input counters = IT input
    pdu_out = counter_delta(rec, lay.pdu_ids, "energy_kwh")
    gpu = counter_delta(rec, lay.gpu_ids, "energy_mj") / 3.6e9  # mJ -> kWh
    # every watt at the utility meter is IT energy, a loss, cooling or the misc load
    total = (
        it
        + led["pdu_loss"]
        + led["ups_loss"]
        + led["switchgear_loss"]
        + led["transformer_loss"]
        + plant
        + led["cdu_pump"]
        + led["crah_fan"]
        + led["misc"]
    )
    assert facility == pytest.approx(total, rel=1e-3)
    assert facility > it > 0
    assert pdu_out == pytest.approx(it, rel=1e-3)
    assert ups_out == pytest.approx(it + led["pdu_loss"], rel=1e-3)
    # IT energy = GPU energy (NVML counters) + node overhead + PSU conversion losses
    assert it == pytest.approx(gpu + led["node_overhead"] + led["psu_loss"], rel=1e-3)
    assert plant == pytest.approx(
        led["chiller"] + led["tower"] + led["chw_pump"] + led["cw_pump"], rel=1e-3
    )
    # the workload was not flat (this is not a trivially constant hour)
    power = rec.series(meter["facility_input"], "power_kw")
    assert power.max() > power.min() * 1.01
    pue = facility / it
    assert 1.02 < pue < 1.6


def test_heat_removed_equals_heat_produced_in_steady_state():
    sim = SiteSimulator(SITE, seed=2, start_time_s=JUL, climate="hot-humid", constant_util=0.7)
    rec = Recorder(sim).run(
        2.0,
        10.0,
        probe=lambda s: {
            "it": s.plant.it_kw,
            "pdu_loss": s.plant.pdu_loss_kw,
            "ups_loss": s.plant.ups_loss_kw,
            "pumps": s.plant.cdu_pump_kw,
            "fans": s.plant.crah_fan_kw,
            "chw_pump": s.plant.chw_pump_kw,
        },
    )
    last = rec.t_h() > 1.5
    lay = sim.layout
    liquid = sum(
        rec.series(d, "flow_lpm")
        / 60000.0
        * c.fluid.density_kg_per_m3
        * c.fluid.cp_kj_per_kg_k
        * (rec.series(d, "return_temp_c") - rec.series(d, "supply_temp_c"))
        for d, c in zip(lay.cdu_ids, lay.cdu_spec, strict=True)
    )
    air = sum(
        rec.series(d, "airflow_m3h")
        / 3600.0
        * AIR_DENSITY_KG_M3
        * AIR_CP_KJ_KG_K
        * (rec.series(d, "return_air_temp_c") - rec.series(d, "supply_air_temp_c"))
        for d in lay.crah_ids
    )
    truth = {k: np.array([x[k] for x in rec.truth])[last].mean() for k in rec.truth[0]}
    # heat produced in the hall, from telemetry only: PSU input, CDU pumps, CRAH fans
    produced_w = (
        sum(rec.series(d, "input_power_w") for d in lay.psu_ids)
        + sum(rec.series(d, "pump_power_w") for d in lay.cdu_ids)
        + sum(rec.series(d, "fan_power_w") for d in lay.crah_ids)
    )
    produced = float(np.mean(produced_w[last])) / 1000.0
    # readings are whole watts (Redfish/PMBus, Modbus registers): exact to that resolution
    assert produced == pytest.approx(truth["it"] + truth["pumps"] + truth["fans"], rel=1e-4)
    removed = float(np.mean((liquid + air)[last]))
    assert removed == pytest.approx(produced, rel=0.01)
    assert float(np.mean(liquid[last])) > 0.75 * produced  # liquid-cooled hall
    # the chilled water takes it all, plus the electrical rooms (PDU and UPS losses, read
    # from PDU input - output and the UPS meters) and its own pump work
    pdu_loss = (
        float(
            np.mean(
                sum(rec.series(d, "input_power_w") - rec.series(d, "power_w") for d in lay.pdu_ids)[
                    last
                ]
            )
        )
        / 1000.0
    )
    assert pdu_loss == pytest.approx(truth["pdu_loss"], rel=2e-3)  # whole-watt readings
    plant_load = rec.series(SITE.plant_id(), "cooling_load_kw")[last].mean()
    assert plant_load == pytest.approx(
        removed + pdu_loss + truth["ups_loss"] + truth["chw_pump"], rel=0.01
    )


def test_energy_counters_only_increase_and_runs_are_deterministic():
    def run(seed):
        sim = SiteSimulator(
            SITE,
            seed=seed,
            start_time_s=JAN,
            faults="gpu_off_bus@any:onset=20m; ecc_storm@any:onset=0,fail_after=1h",
        )
        return Recorder(sim).run(1.5, 30.0)

    a, b, c = run(4), run(4), run(5)
    assert np.array_equal(np.array(a.values), np.array(b.values))
    assert [e.time_ms for e in a.events] == [e.time_ms for e in b.events]
    assert not np.array_equal(np.array(a.values), np.array(c.values))
    lay = a.sim.layout
    for d in lay.gpu_ids[:64]:
        s = a.series(d, "energy_mj")
        s = s[~np.isnan(s)]
        assert (np.diff(s) >= 0).all()
    for d in lay.psu_ids:
        assert (np.diff(a.series(d, "energy_kwh")) >= 0).all()
    for m in SITE.meters:
        assert (np.diff(a.series(SITE.meter_id(m), "energy_kwh")) > 0).all()
