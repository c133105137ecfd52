"""Success-response examples for the OpenAPI document of routes that return plain dicts.

Each is what the route returns on a small site, trimmed; NOC tool authors read them in
/docs before they have a server to call."""

from __future__ import annotations

from typing import Any


def ok_example(example: Any, code: int = 200) -> dict[int | str, dict[str, Any]]:
    """`responses=` documenting the success response's example."""
    return {code: {"content": {"application/json": {"example": example}}}}


WHATIF_RUN: dict[str, Any] = {
    "id": "wi-7f3a9c21",
    "name": "CHW supply +2 K for a day",
    "status": "done",
    "progress": 1.0,
    "submitted": "2026-11-22T03:00:00+00:00",
    "started": "2026-11-22T03:00:01+00:00",
    "finished": "2026-11-22T03:00:15+00:00",
    "scenario": {
        "name": "CHW supply +2 K for a day",
        "horizon_h": 24.0,
        "setpoints": [{"control": "chw_supply_setpoint_c", "value": 14.0}],
    },
    "live": {"time": "2026-11-22T03:00:00+00:00", "gpus_reporting": 512, "pue": 1.24},
    "error": None,
    "result": {
        "pue": 1.21,
        "it_energy_kwh": 19850.0,
        "facility_energy_kwh": 24019.0,
        "peak_gpu_temp_c": 81.5,
        "peak_gpu_id": "sv1/h1/r2/rk03/n4/gpu6",
        "peak_cdu_supply_c": 33.1,
        "violations": [],
        "first_breach": None,
    },
}

WHATIF_COMPARE: dict[str, Any] = {
    "ids": ["wi-7f3a9c21", "wi-1b2c3d4e"],
    "names": ["CHW supply +2 K for a day", "baseline"],
    "status": ["done", "done"],
    "figures": {
        "pue": [1.21, 1.24],
        "peak_gpu_temp_c": [81.5, 79.8],
        "violations": [0, 0],
        "first_breach": [None, None],
    },
    "runs": [WHATIF_RUN],
}

SUSTAINABILITY: dict[str, Any] = {
    "period": "day",
    "start": "2026-11-15T00:00:00+00:00",
    "end": "2026-11-22T00:00:00+00:00",
    "intensity_source": "file:/etc/dctwin/carbon-intensity.csv",
    "figures": [
        {
            "start": "2026-11-21T00:00:00+00:00",
            "hours": 24,
            "it_energy_kwh": 19850.2,
            "facility_energy_kwh": 24613.9,
            "emissions_kgco2e": 6891.9,
            "cue_kgco2e_per_kwh": 0.347,
            "cue_hours": 24,
            "water_l": 41210.5,
            "wue_l_per_kwh": 2.08,
            "wue_hours": 24,
        }
    ],
    "flexible_load": {"kw": 400.0, "hours": 4.0, "start_hour": 14},
    "advice": [
        {
            "day": "2026-11-22",
            "scheduled_start_hour": 14,
            "best_start_hour": 2,
            "scheduled_mean_gco2e_per_kwh": 310.5,
            "best_mean_gco2e_per_kwh": 241.3,
            "saving_kgco2e": 121.4,
            "shift": True,
        }
    ],
    "saving_kgco2e_total": 121.4,
}
