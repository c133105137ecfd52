"""Fault catalog, the `--faults` spec language, random catalogs and ground-truth labels.

Spec (see docs/simulator.md):

    SPEC   := ITEM { ";" | newline  ITEM }
    ITEM   := TYPE "@" TARGET [ ":" KEY "=" VALUE { "," KEY "=" VALUE } ]
            | "random" [ ":" KEY "=" VALUE ... ]        (n, seed)
    TARGET := DEVICE_ID [ "#" METRIC ]  |  "any" [ "#" METRIC ]

Durations: 90s, 30m, 2h, 1.5d or a bare number of seconds. `onset` is relative to the
start of the run unless it is an ISO time (2025-01-15T03:00:00Z). `any` picks a device
of the right class with the run's seed. Lines starting with "//" are comments.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from simulator.layout import SiteLayout
from simulator.telemetry import CLASS_METRICS, SENSOR_METRICS

H = 3600.0


@dataclass(frozen=True)
class FaultType:
    name: str
    device_class: str  # gpu, psu, cdu, crah, plant, node, ups or sensor (any class + metric)
    signature: str  # gradual or abrupt
    fails: bool  # ends in a failure (failure_time in the labels)
    defaults: dict[str, float]
    description: str
    random: bool = True  # drawn by `random` (a site has one UPS: its faults by name only)


CATALOG: dict[str, FaultType] = {
    t.name: t
    for t in (
        FaultType(
            "pump_degradation",
            "cdu",
            "gradual",
            True,
            {"fail_after": 24 * H, "severity": 0.4, "redundant": 1.0},
            "impeller/wear-ring wear: pump head falls by `severity` (accelerating) until "
            "the pump seizes at onset+fail_after; speed and power rise for the same flow; "
            "the standby pump takes over (redundant=0: none, the loop stops)",
        ),
        FaultType(
            "hx_fouling",
            "cdu",
            "gradual",
            False,
            {"duration": 48 * H, "severity": 0.6},
            "fouling resistance grows linearly; UA falls by `severity` over `duration`",
        ),
        FaultType(
            "tim_degradation",
            "gpu",
            "gradual",
            False,
            {"duration": 72 * H, "severity": 1.0},
            "thermal interface pump-out: coolant-to-die resistance rises by `severity`",
        ),
        FaultType(
            "psu_aging",
            "psu",
            "gradual",
            True,
            {"fail_after": 48 * H, "severity": 2.0},
            "capacitor/fan aging: losses rise (x(1+severity) at the end), the PSU runs "
            "hotter, then fails; its rack's other PSUs take the load",
        ),
        FaultType(
            "crah_fan_failure",
            "crah",
            "abrupt",
            True,
            {"precursor": 0.0},
            "fan motor failure at onset+precursor; optional bearing-wear precursor "
            "(fan power up to +30 %)",
        ),
        FaultType(
            "sensor_drift",
            "sensor",
            "gradual",
            False,
            {"rate": 0.0, "rate_pct": 2.0},
            "reading drifts by `rate` units/h (or `rate_pct` % of the onset value per h)",
        ),
        FaultType(
            "sensor_stuck", "sensor", "abrupt", False, {}, "reading frozen at its value at onset"
        ),
        FaultType(
            "coolant_leak",
            "cdu",
            "gradual",
            True,
            {"rate": 5.0, "detect_after": 600.0},
            "secondary loop leak: reservoir falls `rate` %/h, leak sensor trips after "
            "`detect_after`; at 30 % the pump loses prime (failure)",
        ),
        FaultType(
            "gpu_off_bus",
            "gpu",
            "abrupt",
            True,
            {},
            "XID 79: GPU has fallen off the bus; its telemetry stops, its node is drained",
        ),
        FaultType(
            "ecc_storm",
            "gpu",
            "gradual",
            True,
            {"fail_after": 6 * H},
            "HBM degradation: corrected ECC errors grow exponentially (XID 92), rows get "
            "remapped (XID 63), contained errors (XID 94), then an uncorrectable error "
            "(XID 48/95) and a failed row remap (XID 64) at failure",
        ),
        FaultType(
            "chiller_low_refrigerant",
            "plant",
            "gradual",
            True,
            {"fail_after": 72 * H, "severity": 1.0},
            "refrigerant leak on the lead chiller: evaporator approach up to +6 K, capacity "
            "down 40 % at full severity, COP falls; trips on low pressure at failure",
        ),
        FaultType(
            "ups_battery_fade",
            "ups",
            "gradual",
            False,
            {"duration": 24 * H, "severity": 0.8},
            "UPS battery capacity fade (dry-out, a failing block): state of health falls by "
            "`severity` of its value over `duration`; runtime at load falls with it",
            random=False,
        ),
        FaultType(
            "ups_battery_test_failed",
            "ups",
            "abrupt",
            False,
            {},
            "the UPS self-test at onset finds a weak string: upsTestResultsSummary "
            "doneError (3) from then on",
            random=False,
        ),
        FaultType(
            "utility_dip",
            "ups",
            "abrupt",
            False,
            {"duration": 120.0, "depth": 0.6},
            "utility voltage sags by `depth` (1 = outage) for `duration`: the UPS runs on "
            "battery, counts a line bad, its charge and runtime fall, then it recharges",
            random=False,
        ),
        FaultType(
            "ups_battery_overtemp",
            "ups",
            "gradual",
            False,
            {"duration": H, "severity": 15.0},
            "battery-room cooling lost: the room warms by `severity` K over `duration` "
            "(VRLA life halves per ~8 K above 25 degC)",
            random=False,
        ),
        FaultType(
            "driver_reload",
            "node",
            "abrupt",
            False,
            {},
            "NVIDIA driver reloaded on a node: GPU energy counters restart at zero",
        ),
    )
}

# -- held-out failure modes (issue 21) --------------------------------------------------
# Mechanisms the failure-risk features (twin/failure/features.py) were NOT designed
# around, for held-out evaluation only: experiments/failure/dataset.py puts them in runs
# with `catalog="heldout"` (`dctwin failure evaluate-heldout`); the training runs and
# `random:` never use them. Intermittent signs (XIDs, spikes, leak episodes) follow a
# schedule that is a pure function of the fault's parameters (`pattern` seeds it, drawn
# from the run's seed when not given), so a label alone reproduces them. See
# docs/simulator.md, "Held-out failure modes".
HELDOUT_CATALOG: dict[str, FaultType] = {
    t.name: t
    for t in (
        FaultType(
            "gpu_gsp_hang",
            "gpu",
            "gradual",
            True,
            {"fail_after": 4 * H, "rate": 0.5, "growth": 2.0, "pattern": -1.0},
            "GSP firmware/PCIe link degrading: sporadic XID 119 (GSP RPC timeout), 120 (GSP "
            "error) and 62 (micro-controller halt) at `rate`/h rising e^growth by the end, "
            "then XID 79: the GPU falls off the bus at onset+fail_after (telemetry stops)",
        ),
        FaultType(
            "hbm_thermal_degradation",
            "gpu",
            "gradual",
            True,
            {"fail_after": 6 * H, "severity": 2.0, "pattern": -1.0},
            "HBM-to-cold-plate contact degrading: memory thermal resistance x(1+severity p); "
            "corrected ECC errors in bursts while the HBM is hot (rate doubles per 1.7 K "
            "above 80 degC, so under load, not at idle); uncorrectable error (XID 48/95) at "
            "failure",
        ),
        FaultType(
            "psu_fan_failure",
            "psu",
            "gradual",
            True,
            {"fail_after": 8 * H, "severity": 2.0},
            "PSU fan bearing wear: the case's rise over inlet air grows x(1+severity p^1.5), "
            "most under load; losses +6 % at the end (hot MOSFETs); over-temperature "
            "shutdown at failure",
        ),
        FaultType(
            "psu_capacitor_wear",
            "psu",
            "gradual",
            True,
            {"fail_after": 10 * H, "severity": 30.0},
            "PFC bulk capacitor ESR wear: a fixed extra loss growing linearly to `severity` "
            "W whatever the load (relatively largest at low load); output off when the "
            "capacitor fails",
        ),
        FaultType(
            "pump_bearing_wear",
            "cdu",
            "gradual",
            True,
            {"fail_after": 8 * H, "severity": 0.25, "pattern": -1.0},
            "pump bearing wear: electrical power up to +severity (x p^2) at the same speed, "
            "flow and head, plus rubbing spikes (1-3 min, rising from 2/h to 15/h); the "
            "bearing seizes at failure and the standby pump takes over",
        ),
        FaultType(
            "seal_leak_intermittent",
            "cdu",
            "gradual",
            True,
            {"rate": 18.0, "weep": 1800.0, "dry": 1800.0, "pattern": -1.0},
            "pump shaft seal weeping in episodes (`weep`, `dry`: mean durations, each 0.5-"
            "1.5x) at `rate` %/h into the CDU's drip tray: the reservoir falls in steps, "
            "the leak cable never trips; at 30 % the pump loses prime (failure)",
        ),
        FaultType(
            "crah_belt_slip",
            "crah",
            "gradual",
            True,
            {"fail_after": 4 * H, "severity": 0.3},
            "fan belt wear: slip up to `severity` (x p): the impeller turns (1-slip) of the "
            "motor speed, the unit runs its motor faster for its airflow, power/speed^3 "
            "falls by (1-slip)^2; the belt breaks at failure",
        ),
        FaultType(
            "crah_winding_fault",
            "crah",
            "gradual",
            True,
            {"fail_after": 3 * H, "severity": 0.5, "pattern": -1.0},
            "fan motor winding insulation breakdown: power spikes of +20-100 % x severity "
            "for 1-3 min, rising from 1/h to 15/h, and +3 % circulating-current loss; the "
            "motor fails (winding short) at failure",
        ),
    )
}
FAULT_TYPES: dict[str, FaultType] = {**CATALOG, **HELDOUT_CATALOG}
SPIKE_RATE_PH = {"pump_bearing_wear": (2.0, 15.0), "crah_winding_fault": (1.0, 15.0)}
# the XIDs a degrading GSP/link raises: (code, share, meaning)
GSP_XIDS = (
    (119, 0.6, "GSP RPC timeout"),
    (120, 0.3, "GSP error"),
    (62, 0.1, "internal micro-controller halt"),
)


def _pattern_rng(params: dict[str, float], stream: int) -> np.random.Generator:
    return np.random.default_rng([int(params["pattern"]), stream])


def intermittent_times(
    onset_s: float, end_s: float, rate0_ph: float, rate1_ph: float, params: dict[str, float]
) -> np.ndarray:
    """Times of a Poisson process on [onset, end) whose rate rises exponentially from
    rate0 to rate1 per hour (thinning), seeded by the fault's `pattern`."""
    rng = _pattern_rng(params, 1)
    span = max(end_s - onset_s, 0.0)
    top = max(rate0_ph, rate1_ph)
    n = int(rng.poisson(top * span / H))
    t = np.sort(rng.uniform(onset_s, onset_s + span, n))
    p = (t - onset_s) / max(span, 1e-9)
    rate = rate0_ph * (rate1_ph / rate0_ph) ** p if rate0_ph > 0 else np.full(n, top)
    keep = rng.uniform(0.0, 1.0, n) < rate / top
    return t[keep]


def seal_leak_episodes(onset_s: float, params: dict[str, float]) -> tuple[np.ndarray, float]:
    """Weeping episodes [(start, end)] of an intermittent seal leak until the reservoir
    has lost 70 % (30 % left), and the time it gets there (the failure)."""
    rng = _pattern_rng(params, 2)
    need_s = 70.0 / params["rate"] * H  # weeping time until 30 % is left
    out, t, wept = [], onset_s, 0.0
    while wept < need_s:
        d = params["weep"] * rng.uniform(0.5, 1.5)
        if wept + d >= need_s:
            d = need_s - wept
        out.append((t, t + d))
        wept += d
        t += d + params["dry"] * rng.uniform(0.5, 1.5)
    return np.array(out), float(out[-1][1])


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": H, "d": 24 * H}


class FaultSpecError(ValueError):
    """The fault spec is invalid; the message names the item and field."""


@dataclass
class Fault:
    fault_id: str
    type: str
    device_id: str
    device_class: str
    index: int  # into the device class's arrays (0 for the plant)
    onset_s: float  # Unix seconds
    failure_s: float | None
    params: dict[str, float]
    metric: str | None = None

    @property
    def kind(self) -> FaultType:
        return FAULT_TYPES[self.type]

    def label(self) -> dict:
        """One ground-truth row."""
        return {
            "fault_id": self.fault_id,
            "fault": self.type,
            "device_id": self.device_id,
            "device_class": self.device_class,
            "metric": self.metric,
            "onset_ms": int(round(self.onset_s * 1000)),
            "failure_ms": None if self.failure_s is None else int(round(self.failure_s * 1000)),
            "signature": self.kind.signature,
            "params": json.dumps(self.params, sort_keys=True),
        }


def parse_duration(text: str, what: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise FaultSpecError(f"{what}: {text!r} is not a duration (e.g. 90s, 30m, 2h, 1.5d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _parse_time(text: str, start_s: float, what: str) -> float:
    if "T" in text or text.count("-") >= 2:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise FaultSpecError(f"{what}: {text!r} is not an ISO time") from exc
    return start_s + parse_duration(text, what)


@dataclass
class FaultPlan:
    faults: list[Fault] = field(default_factory=list)

    def labels(self) -> list[dict]:
        return [f.label() for f in self.faults]

    def __len__(self) -> int:
        return len(self.faults)


def _class_of(layout: SiteLayout, device: str, where: str) -> tuple[str, int]:
    found = layout.index().get(device)
    if found is None:
        raise FaultSpecError(f"{where}: device {device!r} is not in site {layout.site.site.id}")
    return found


def _ids(layout: SiteLayout, cls: str) -> list[str]:
    if cls == "plant":
        return [layout.site.plant_id()]
    if cls == "ups":
        return [layout.ups_id]
    return {
        "gpu": layout.gpu_ids,
        "psu": layout.psu_ids,
        "cdu": layout.cdu_ids,
        "crah": layout.crah_ids,
        "pdu": layout.pdu_ids,
        "node": layout.node_ids,
    }[cls]


def _pick(ids: list[str], rng: np.random.Generator, used: set[str]) -> str:
    """A random device, preferring ones no other fault of this plan has taken."""
    free = [i for i in ids if i not in used] if len(used) < len(ids) else ids
    return (free or ids)[int(rng.integers(len(free or ids)))]


def _make(
    layout: SiteLayout,
    n: int,
    ftype: str,
    target: str,
    params: dict[str, str],
    start_s: float,
    rng: np.random.Generator,
    where: str,
    used: set[str] | None = None,
) -> Fault:
    kind = FAULT_TYPES[ftype]
    used = used if used is not None else set()
    device, _, metric_name = target.partition("#")
    metric = metric_name or None
    if kind.device_class == "sensor":
        if metric is None:
            raise FaultSpecError(f"{where}: {ftype} needs a metric: DEVICE#METRIC")
        if device == "any":
            cls = next(
                (
                    c
                    for c, ms in CLASS_METRICS.items()
                    if metric in ms and c not in ("meter", "plant", "ups") and _ids(layout, c)
                ),
                None,
            )
            if cls is None:
                raise FaultSpecError(f"{where}: no device of this site reports {metric!r}")
            device = _pick(_ids(layout, cls), rng, used)
        cls, idx = _class_of(layout, device, where)
        if metric not in CLASS_METRICS.get(cls, ()):
            raise FaultSpecError(
                f"{where}: a {cls} does not report {metric!r} "
                f"(it reports {CLASS_METRICS.get(cls, [])})"
            )
    else:
        if metric is not None:
            raise FaultSpecError(f"{where}: {ftype} takes a device, not DEVICE#METRIC")
        cls = kind.device_class
        if device == "any":
            if not _ids(layout, cls):
                raise FaultSpecError(f"{where}: this site has no {cls} for {ftype}")
            device = _pick(_ids(layout, cls), rng, used)
        found_cls, idx = _class_of(layout, device, where)
        if cls == "node" and found_cls == "gpu":  # a GPU names its node
            found_cls, idx = "node", int(layout.gpu_node[idx])
            device = layout.node_ids[idx]
        if found_cls != cls:
            raise FaultSpecError(
                f"{where}: {ftype} applies to a {cls}, {device!r} is a {found_cls}"
            )
    values: dict[str, float] = dict(kind.defaults)
    onset_s = start_s
    for key, raw in params.items():
        if key == "onset":
            onset_s = _parse_time(raw, start_s, f"{where}: onset")
        elif key not in kind.defaults:
            raise FaultSpecError(
                f"{where}: unknown parameter {key!r} for {ftype} "
                f"(known: onset, {', '.join(kind.defaults) or 'none'})"
            )
        elif key in ("fail_after", "duration", "detect_after", "precursor", "weep", "dry"):
            values[key] = parse_duration(raw, f"{where}: {key}")
        else:
            pct = raw.strip().endswith("%")
            try:
                v = float(raw.strip().rstrip("%"))
            except ValueError:
                raise FaultSpecError(f"{where}: {key}={raw!r} is not a number") from None
            if key == "rate" and pct and ftype == "sensor_drift":
                values["rate_pct"], values["rate"] = v, 0.0
            else:
                values[key] = v / 100.0 if pct and key == "severity" else v
    if ftype == "sensor_drift" and "rate" in params and not params["rate"].endswith("%"):
        values["rate_pct"] = 0.0
    if values.get("pattern", 0.0) < 0:  # held-out modes: the schedule's seed, from the run's
        values["pattern"] = float(rng.integers(1, 2**31))
    failure_s = None
    if ftype == "seal_leak_intermittent":
        if min(values["rate"], values["weep"], values["dry"]) <= 0:
            raise FaultSpecError(f"{where}: rate, weep and dry must be > 0")
        failure_s = seal_leak_episodes(onset_s, values)[1]
    elif "fail_after" in values:
        failure_s = onset_s + values["fail_after"]
    elif ftype == "coolant_leak":
        if values["rate"] <= 0:
            raise FaultSpecError(f"{where}: rate must be > 0 %/h")
        failure_s = onset_s + 70.0 / values["rate"] * H
    elif ftype == "crah_fan_failure":
        failure_s = onset_s + values["precursor"]
    elif ftype == "gpu_off_bus":
        failure_s = onset_s
    used.add(device)
    return Fault(f"F{n:03d}", ftype, device, cls, idx, onset_s, failure_s, values, metric)


def random_faults(
    layout: SiteLayout,
    n: int,
    start_s: float,
    horizon_s: float,
    rng: np.random.Generator,
    first_id: int = 0,
    used: set[str] | None = None,
) -> list[Fault]:
    """n faults cycling through the whole catalog, onsets and failures inside the horizon."""
    names = [n for n, t in CATALOG.items() if t.random]
    out: list[Fault] = []
    used = used if used is not None else set()
    order: list[str] = []
    while len(order) < n:
        order += list(rng.permutation(names))
    for i, ftype in enumerate(order[:n]):
        kind = CATALOG[ftype]
        target = "any"
        if kind.device_class == "sensor":
            cls = str(rng.choice(sorted(SENSOR_METRICS)))
            ids = _ids(layout, cls)
            if not ids:
                cls, ids = "cdu", _ids(layout, "cdu")
            metric = str(rng.choice(SENSOR_METRICS[cls]))
            target = f"{_pick(ids, rng, used)}#{metric}"
        elif not _ids(layout, kind.device_class):
            continue
        params = {"onset": f"{rng.uniform(0.05, 0.5) * horizon_s:.0f}"}
        if "fail_after" in kind.defaults:
            params["fail_after"] = f"{rng.uniform(0.15, 0.45) * horizon_s:.0f}"
        if "duration" in kind.defaults:
            params["duration"] = f"{rng.uniform(0.3, 0.6) * horizon_s:.0f}"
        if ftype == "coolant_leak":
            params["rate"] = f"{70.0 / (rng.uniform(0.2, 0.45) * horizon_s / H):.3f}"
        out.append(
            _make(
                layout,
                first_id + len(out),
                ftype,
                target,
                params,
                start_s,
                rng,
                f"random fault {i}",
                used,
            )
        )
    return out


def parse_faults(
    spec: str | None, layout: SiteLayout, start_s: float, seed: int = 0, horizon_s: float = 24 * H
) -> FaultPlan:
    """Parse a spec (or the text of a spec file) into resolved faults."""
    plan = FaultPlan()
    if not spec or not spec.strip():
        return plan
    rng = np.random.default_rng([seed, 0xFA17])
    used: set[str] = set()
    items = [
        s.strip()
        for line in spec.splitlines()
        if not line.strip().startswith("//")
        for s in line.split(";")
    ]
    for pos, item in enumerate(i for i in items if i):
        where = f"faults item {pos + 1} ({item!r})"
        head, _, rest = item.partition(":")
        params: dict[str, str] = {}
        for kv in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = kv.partition("=")
            if not eq or not value.strip():
                raise FaultSpecError(f"{where}: expected KEY=VALUE, got {kv!r}")
            params[key.strip()] = value.strip()
        if head.strip() == "random":
            bad = set(params) - {"n", "seed"}
            if bad:
                raise FaultSpecError(f"{where}: random takes n and seed, not {sorted(bad)}")
            try:
                n = int(params.get("n", len(CATALOG)))
                sub = np.random.default_rng([int(params.get("seed", seed)), 0xFA17])
            except ValueError:
                raise FaultSpecError(f"{where}: n and seed must be integers") from None
            plan.faults += random_faults(layout, n, start_s, horizon_s, sub, len(plan.faults), used)
            continue
        ftype, at, target = head.partition("@")
        ftype, target = ftype.strip(), target.strip()
        if ftype not in FAULT_TYPES:
            raise FaultSpecError(f"{where}: unknown fault {ftype!r} (known: {sorted(FAULT_TYPES)})")
        if not at or not target:
            raise FaultSpecError(f"{where}: expected TYPE@DEVICE[:KEY=VALUE,...]")
        plan.faults.append(
            _make(layout, len(plan.faults), ftype, target, params, start_s, rng, where, used)
        )
    return plan
