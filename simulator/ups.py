"""The UPS and its battery string, as an SNMP UPS-MIB agent (RFC 1628) reports them.

State of charge integrates the battery's DC power: on battery it falls at the rate
that empties a full string in exactly the runtime at the present load (Peukert-like,
`domain.site.Ups.battery_runtime_s`); back on utility the charger refills it at a
constant current that tapers over the last 10 %. State of health starts from the age
of the string (capacity fades to 80 % at the end of its design life, IEEE 1188's
replacement criterion) and falls further under the `ups_battery_fade` fault. The
battery temperature follows the battery room (fan-coil cooled, drifting a little with
the weather) plus I^2R self-heating. See docs/simulator.md, "UPS battery".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from domain.site import BATTERY_INVERTER_EFFICIENCY, BatteryChemistry, Ups

H = 3600.0
ROOM_C = 23.0  # battery room setpoint (VRLA life is rated at 20-25 degC)
ROOM_WEATHER_K_PER_K = 0.05  # room drift per K of outdoor dry bulb above 20 degC
TEMP_RISE_FLOAT_K = 1.0  # float-charge self-heating
TEMP_RISE_RATED_K = 6.0  # extra rise at the rated-load discharge current (I^2 R)
TEMP_TIME_CONSTANT_S = 1800.0  # a string of blocks is a large thermal mass
RECHARGE_H = {BatteryChemistry.vrla: 8.0, BatteryChemistry.li_ion: 2.0}  # 0 -> 90 %
END_OF_LIFE_SOH = 0.8
LOW_BATTERY_S = 120.0  # upsConfigLowBattTime: below it upsBatteryStatus is low(3)
TEST_INTERVAL_S = 30 * 24 * H  # monthly self-test
TEST_DURATION_S = 30.0
# open-circuit voltage per nominal volt: empty .. full, and float voltage on utility
# (VRLA 2.25 V per 2 V cell, Li-ion ~3.45 V per 3.2 V cell)
OCV_EMPTY, OCV_FULL = 0.94, 1.06
FLOAT_V = {BatteryChemistry.vrla: 1.125, BatteryChemistry.li_ion: 1.08}
SAG_AT_RATED = 0.06  # internal-resistance drop at the rated-load discharge current
LINE_TOLERANCE = 0.10  # input voltage outside +-10 % of nominal: the UPS goes to battery

# UPS-MIB enumerations
STATUS_NORMAL, STATUS_LOW, STATUS_DEPLETED = 2, 3, 4
TEST_PASS, TEST_ERROR, TEST_IN_PROGRESS = 1, 3, 5


@dataclass
class UpsEffects:
    """What the fault injector imposes on the UPS this step."""

    input_voltage_factor: float = 1.0  # of nominal (a dip below 0.9 puts it on battery)
    soh_factor: float = 1.0  # capacity fade on top of age
    room_rise_k: float = 0.0  # battery-room cooling lost
    test_failed: bool = False  # the last self-test found a weak string


def age_soh(ups: Ups, at_s: float) -> float:
    """State of health from the string's age: 1 when new, END_OF_LIFE_SOH at the
    replacement date, falling with the square of age (sulfation and dry-out accelerate)."""
    b = ups.battery
    due = b.replacement_due()
    if b.installed is None or due is None:
        return 1.0
    now = datetime.fromtimestamp(at_s, UTC).date()
    life = max((due - b.installed).days, 1)
    x = max((now - b.installed).days, 0) / life
    return float(max(1.0 - (1.0 - END_OF_LIFE_SOH) * x * x, 0.05))


class UpsModel:
    """One UPS: battery charge, health and temperature, and its UPS-MIB readings."""

    def __init__(self, ups: Ups, start_s: float, phase: float) -> None:
        self.ups = ups
        self.charge = 1.0  # state of charge, 0..1
        self.soh = age_soh(ups, start_s)
        self.temp_c = ROOM_C + TEMP_RISE_FLOAT_K
        self.on_battery = 0.0
        self.seconds_on_battery = 0.0
        self.line_bads = 0.0
        self.test_result = float(TEST_PASS)  # the last monthly test passed
        self.test_phase_s = phase * TEST_INTERVAL_S  # seeded: sites do not all test at once
        self.start_s = start_s
        self.out_kw = 0.0
        self.runtime_s = 0.0
        self.battery_v = ups.battery.nominal_voltage_v * FLOAT_V[ups.battery.chemistry]
        self.battery_a = 0.0
        self.input_v = ups.input_voltage_v
        self.frequency_hz = ups.frequency_hz
        self.status = float(STATUS_NORMAL)
        self.alarms = 0.0

    def step(self, dt_s: float, t: float, out_kw: float, outdoor_c: float, e: UpsEffects) -> None:
        """Advance by dt_s at output load out_kw (settling steps pass dt_s = 0)."""
        ups, b = self.ups, self.ups.battery
        self.out_kw = out_kw
        self.soh = age_soh(ups, t) * e.soh_factor
        v_nom = b.nominal_voltage_v
        self.input_v = ups.input_voltage_v * e.input_voltage_factor
        was_on = self.on_battery
        self.on_battery = float(abs(e.input_voltage_factor - 1.0) > LINE_TOLERANCE)
        if self.on_battery and not was_on:  # upsInputLineBads counts each excursion
            self.line_bads += 1.0
        self.frequency_hz = ups.frequency_hz if e.input_voltage_factor > 0.05 else 0.0
        energy_kj = ups.battery_energy_kwh() * 3600.0 * self.soh
        if self.on_battery:
            self.seconds_on_battery += dt_s
            full_runtime_s = ups.battery_runtime_s(out_kw, self.soh, 1.0)
            self.charge = max(self.charge - dt_s / full_runtime_s, 0.0)
            dc_kw = out_kw / BATTERY_INVERTER_EFFICIENCY
            x = dc_kw / (ups.rated_kw / BATTERY_INVERTER_EFFICIENCY)
            self.battery_v = v_nom * (
                OCV_EMPTY + (OCV_FULL - OCV_EMPTY) * self.charge - SAG_AT_RATED * x
            )
            self.battery_a = dc_kw * 1000.0 / self.battery_v
            heat = TEMP_RISE_RATED_K * x * x
        else:
            self.seconds_on_battery = 0.0
            rate = 0.9 / (RECHARGE_H[b.chemistry] * H)  # constant current to 90 %
            taper = min(1.0, (1.0 - self.charge) / 0.1)  # then constant voltage
            d_charge = min(rate * taper * dt_s, 1.0 - self.charge)
            self.charge += d_charge
            self.battery_v = v_nom * FLOAT_V[b.chemistry]
            charge_kw = rate * taper * energy_kj
            float_a = 0.001 * energy_kj / 3.6 / v_nom  # float current, ~1 mA per Ah
            self.battery_a = -(charge_kw * 1000.0 / self.battery_v + float_a)
            heat = 0.0
        room = ROOM_C + ROOM_WEATHER_K_PER_K * (outdoor_c - 20.0) + e.room_rise_k
        target = room + TEMP_RISE_FLOAT_K + heat
        self.temp_c += (target - self.temp_c) * (1.0 - np.exp(-dt_s / TEMP_TIME_CONSTANT_S))
        self.runtime_s = ups.battery_runtime_s(out_kw, self.soh, self.charge)
        # monthly self-test: in progress for TEST_DURATION_S, then pass or (fault) error
        since = (t - self.start_s + self.test_phase_s) % TEST_INTERVAL_S
        if dt_s > 0 and since < TEST_DURATION_S and not self.on_battery:
            self.test_result = float(TEST_IN_PROGRESS)
        elif self.test_result == TEST_IN_PROGRESS or e.test_failed:
            self.test_result = float(TEST_ERROR if e.test_failed else TEST_PASS)
        if self.charge <= 0.0:
            self.status = float(STATUS_DEPLETED)
        elif self.runtime_s <= LOW_BATTERY_S:
            self.status = float(STATUS_LOW)
        else:
            self.status = float(STATUS_NORMAL)
        # upsAlarmsPresent: on battery, low battery, test failure, input bad, temperature
        self.alarms = float(
            self.on_battery
            + (self.status != STATUS_NORMAL)
            + (self.test_result == TEST_ERROR)
            + (self.on_battery > 0)
            + (self.temp_c > 40.0)
        )

    @property
    def load_pct(self) -> float:
        return 100.0 * self.out_kw / self.ups.rated_kw
