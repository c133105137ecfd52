"""What the API needs of a scenario runner and of the demo's on-call receiver (issue 26).

`dctwin serve` on a simulated site hands the app a `ScenarioRunner` (dctwin/scenario.py);
the demo hands it its `PageLog` (dctwin/oncall.py). The API imports neither: it reads
them through these protocols, so the runtime layers never import the simulator.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field


class ScenarioError(ValueError):
    """A scenario that cannot run on this site (bad file, unknown device or fault kind)."""


class UnknownScenarioError(LookupError):
    """No scenario by that name."""


class ScenarioInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "utility-dip",
                    "description": "a 60 s utility outage carried by the UPS battery",
                    "faults": [
                        {
                            "at": "5s",
                            "kind": "utility_dip",
                            "device": "sv1/facility/ups",
                            "duration": "60s",
                        }
                    ],
                }
            ]
        }
    )

    name: str
    description: str
    faults: list[dict[str, Any]] = Field(description="at, kind, device, duration per fault")


class ScenarioRunnerLike(Protocol):
    def list(self) -> list[ScenarioInfo]: ...

    def run(self, name: str) -> dict[str, Any]: ...


class ReceivedPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "received_at": "2026-12-07T06:14:19Z",
                    "signature_valid": True,
                    "status": "firing",
                    "receiver": "demo-oncall",
                    "alerts": [
                        {
                            "status": "firing",
                            "labels": {"alertname": "UpsOnBattery", "severity": "critical"},
                            "annotations": {
                                "summary": "UPS sv1/facility/ups on battery",
                                "runbook_url": "http://127.0.0.1:8000/runbooks/UpsOnBattery",
                            },
                        }
                    ],
                }
            ]
        }
    )

    received_at: str = Field(description="RFC 3339 UTC time the receiver got it")
    signature_valid: bool = Field(description="HMAC-SHA256 signature and timestamp verified")
    status: str = Field(description="firing or resolved (the webhook's group status)")
    receiver: str
    alerts: list[dict[str, Any]] = Field(description="the Alertmanager v4 alerts")


class PageLogLike(Protocol):
    def pages(self) -> list[ReceivedPage]: ...
