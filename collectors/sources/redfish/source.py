"""Redfish source: BMCs, CDUs, power shelves and PDUs over HTTP(S) with httpx.

The first read walks the service from `/redfish/v1` (Chassis sensors, power supplies,
environment metrics, chassis liquid cooling, ThermalEquipment CDUs, PowerEquipment PDUs)
and keeps a plan: the resources that carry readings or health. Later reads GET only those,
and the walk is repeated every `rediscover_s` or when a planned resource disappears.
A chassis sensor that an equipment resource already cites (`DataSourceUri`) is not read
twice. Mapping tables live in `fields.py`; see docs/collectors.md.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from collectors.base import Readings, now_ms, source_error_event
from collectors.sources.redfish import fields as rmap
from collectors.sources.redfish.events import EventListener
from collectors.sources.redfish.inventory import PsuInventory, psu_documents
from domain.contract import Event, EventKind, Kind

log = logging.getLogger(__name__)

ROOT = "/redfish/v1"
Section = Literal["sensors", "environment", "power_supplies", "chassis_cooling", "cdus", "pdus"]
ALL_SECTIONS: frozenset[Section] = frozenset(get_args(Section))

# link name -> the section that switches it on (None: always followed)
_NAV: dict[str, dict[str, Section | None]] = {
    "ServiceRoot": {"Chassis": None, "ThermalEquipment": "cdus", "PowerEquipment": "pdus"},
    "Chassis": {
        "Sensors": "sensors",
        "EnvironmentMetrics": "environment",
        "PowerSubsystem": "power_supplies",
        "ThermalSubsystem": "chassis_cooling",
        "LeakDetectors": "chassis_cooling",
        # deprecated resources, walked only without their successor (see _superseded)
        "Power": "power_supplies",
        "Thermal": "chassis_cooling",
    },
    "PowerSubsystem": {"PowerSupplies": None},
    "PowerSupply": {"Metrics": None},
    "ThermalSubsystem": {
        "CoolantConnectors": None,
        "Pumps": None,
        "LeakDetection": None,
        "Fans": None,
    },
    "ThermalEquipment": {"CDUs": None, "HeatExchangers": None, "ImmersionUnits": None},
    "CoolingUnit": {
        "PrimaryCoolantConnectors": None,
        "SecondaryCoolantConnectors": None,
        "Pumps": None,
        "Filters": None,
        "Reservoirs": None,
        "LeakDetection": None,
        "EnvironmentMetrics": None,
    },
    "LeakDetection": {"LeakDetectors": None},
    "PowerEquipment": {
        "RackPDUs": None,
        "FloorPDUs": None,
        "PowerShelves": None,
        "TransferSwitches": None,
        "Switchgear": None,
    },
    "PowerDistribution": {"Metrics": None, "Outlets": None, "Mains": None, "Branches": None},
}
# links whose target must be of this type; a service that links elsewhere by mistake
# (DMTF's power-shelf mockup points PowerSubsystem at Sensors) gets the conventional URI
_EXPECTED = {
    "PowerSubsystem": "PowerSubsystem",
    "ThermalSubsystem": "ThermalSubsystem",
    "EnvironmentMetrics": "EnvironmentMetrics",
    "Power": "Power",
    "Thermal": "Thermal",
}
# legacy link -> the newer link that replaces it: a chassis linking both is read through
# the newer one only, so nothing is reported twice
_SUPERSEDED_BY = {"Power": "PowerSubsystem", "Thermal": "ThermalSubsystem"}
_LEGACY = frozenset(_SUPERSEDED_BY)
# resources read every interval: they carry readings or a health status worth watching
_WATCHED = set(rmap.PROPERTIES) | {
    "Sensor",
    "LeakDetector",
    "LeakDetection",
    "Chassis",
    "CoolingUnit",
    "PowerSupply",
    "Filter",
    "PowerDistribution",
    "Power",
    "Thermal",
}
_CITABLE = {"Sensor", "LeakDetector"}  # dropped from the plan when an excerpt cites them


class RedfishSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["redfish"] = "redfish"
    name: str = "redfish"
    base_url: str = Field(description="scheme://host[:port] of the Redfish service")
    auth: Literal["session", "basic", "none"] = "session"
    username: str = ""
    password: SecretStr = SecretStr("")
    verify_tls: bool | Path = Field(True, description="false, true or a CA bundle path")
    timeout_s: float = Field(5.0, gt=0, le=120, description="per HTTP request")
    device_prefix: str = Field(min_length=1, description="e.g. sv1/h1/cdu-row1")
    rack: str = Field(min_length=1, description="partition key: rack id or hall id")
    devices: dict[str, str] = Field(
        default_factory=dict,
        description="Redfish path (below /redfish/v1) -> device id; children inherit it",
    )
    chassis_kind: Literal["power", "cooling"] = Field(
        "power", description="kind of chassis temperatures that are neither coolant nor PSU"
    )
    sections: set[Section] = Field(default_factory=lambda: set(ALL_SECTIONS))
    rediscover_s: float = Field(600.0, gt=0)
    max_resources: int = Field(5000, ge=1, description="bound on one walk of the service")
    events: Literal["auto", "sse", "poll", "off"] = Field(
        "auto",
        description="auto: SSE when EventService offers ServerSentEventUri, else poll the "
        "LogServices; sse / poll force one; off: health from Status only",
    )
    event_poll_s: float = Field(30.0, gt=0, description="log polling period")
    event_log_services: list[str] = Field(
        default_factory=list,
        description="LogService paths to poll (below /redfish/v1); empty: every LogService "
        "of every Manager, System and Chassis",
    )
    event_retry_s: float = Field(1.0, gt=0, description="first reconnect delay; doubles")
    event_retry_max_s: float = Field(60.0, gt=0, description="longest reconnect delay")
    event_idle_timeout_s: float = Field(
        300.0, gt=0, description="a stream silent this long (no event, no keep-alive) is redone"
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        url = httpx.URL(v)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {v!r}")
        return v.rstrip("/")

    @field_validator("devices")
    @classmethod
    def _relative_paths(cls, v: dict[str, str]) -> dict[str, str]:
        # "/redfish/v1/Chassis/1U/" and "Chassis/1U" name the same resource
        return {
            k.strip("/").removeprefix("redfish/v1").strip("/"): d.rstrip("/") for k, d in v.items()
        }

    @field_validator("event_log_services")
    @classmethod
    def _log_paths(cls, v: list[str]) -> list[str]:
        return [p.strip("/").removeprefix("redfish/v1").strip("/") for p in v]

    @model_validator(mode="after")
    def _credentials(self) -> RedfishSourceConfig:
        if self.auth != "none" and not self.username:
            raise ValueError(f"username is required with auth = {self.auth!r}")
        return self


class RedfishError(RuntimeError):
    pass


@dataclass
class _Entry:
    uri: str
    rtype: str
    owner_kind: Kind
    loop: tuple[str, dict[str, str]] | None = None  # (CDU uri, metric renames)


class RedfishSource:
    def __init__(self, config: RedfishSourceConfig, client: httpx.Client | None = None) -> None:
        self.config = config
        self.name = config.name
        self.client = client or self.make_client(config.timeout_s)
        self._auth_lock = threading.Lock()
        self._token: str | None = None
        self._session_uri: str | None = None
        self.events: EventListener | None = None  # started by the first read
        self._plan: list[_Entry] | None = None
        self._discovered_at = 0.0
        self._active: dict[str, tuple[rmap.Finding, str]] = {}  # key -> (finding, reporter)
        self._psu_inventory = PsuInventory(self.name)  # PSU serials: inventory events
        self._device_keys = sorted(config.devices, key=len, reverse=True)
        self._walk_errors: list[str] = []

    # -- HTTP --------------------------------------------------------------------------
    def make_client(self, timeout: float | httpx.Timeout) -> httpx.Client:
        cfg = self.config
        verify: bool | ssl.SSLContext = (
            cfg.verify_tls
            if isinstance(cfg.verify_tls, bool)
            else ssl.create_default_context(cafile=str(cfg.verify_tls))
        )
        return httpx.Client(
            base_url=cfg.base_url,
            verify=verify,
            timeout=timeout,
            headers={"Accept": "application/json", "OData-Version": "4.0"},
            auth=(
                httpx.BasicAuth(cfg.username, cfg.password.get_secret_value())
                if cfg.auth == "basic"
                else None
            ),
        )

    def _login(self, stale: str | None) -> None:
        """Log in unless another thread already replaced the token `stale` (the read
        and the event threads share one session)."""
        cfg = self.config
        with self._auth_lock:
            if self._token is not None and self._token != stale:
                return
            resp = self.client.post(
                f"{ROOT}/SessionService/Sessions",
                json={"UserName": cfg.username, "Password": cfg.password.get_secret_value()},
            )
            token = resp.headers.get("X-Auth-Token")
            if resp.status_code not in (200, 201) or not token:
                raise RedfishError(
                    f"{cfg.base_url}: session login failed (HTTP {resp.status_code})"
                )
            self._token = token
            self._session_uri = resp.headers.get("Location")

    def _auth_headers(self) -> dict[str, str]:
        if self.config.auth != "session":
            return {}
        if self._token is None:
            self._login(None)
        return {"X-Auth-Token": self._token or ""}

    def get(
        self, uri: str, client: httpx.Client | None = None
    ) -> tuple[dict[str, Any] | None, int]:
        """(document or None if gone, read time). Transport errors propagate."""
        client = client or self.client
        headers = self._auth_headers()
        resp = client.get(uri, headers=headers)
        if resp.status_code == 401 and self.config.auth == "session":
            self._login(headers.get("X-Auth-Token"))  # session expired or BMC restarted
            resp = client.get(uri, headers=self._auth_headers())
        t = now_ms()
        if resp.status_code == 404:
            return None, t
        if resp.status_code != 200:
            raise RedfishError(f"GET {uri}: HTTP {resp.status_code}")
        try:
            doc = resp.json()
        except ValueError as exc:
            raise RedfishError(f"GET {uri}: invalid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise RedfishError(f"GET {uri}: not a JSON object")
        return doc, t

    @contextmanager
    def stream(
        self, uri: str, client: httpx.Client, headers: dict[str, str], timeout: httpx.Timeout
    ) -> Iterator[httpx.Response]:
        """An open streaming GET (for SSE), logged in again once on a 401."""
        for attempt in (0, 1):
            auth = self._auth_headers()
            with client.stream("GET", uri, headers={**headers, **auth}, timeout=timeout) as resp:
                if resp.status_code == 401 and self.config.auth == "session" and not attempt:
                    stale = auth.get("X-Auth-Token")
                else:
                    yield resp
                    return
            self._login(stale)

    # -- naming ------------------------------------------------------------------------
    def device_id(self, uri: str) -> str:
        path = uri.rstrip("/").removeprefix(ROOT).strip("/")
        for k in self._device_keys:
            if path == k or path.startswith(k + "/"):
                return self.config.devices[k] + path[len(k) :]
        return f"{self.config.device_prefix}/{path}" if path else self.config.device_prefix

    # -- discovery ---------------------------------------------------------------------
    def _discover(self) -> tuple[list[_Entry], dict[str, tuple[dict[str, Any], int]]]:
        cfg = self.config
        chassis_kind = Kind(cfg.chassis_kind)
        self._walk_errors = []
        docs: dict[str, tuple[dict[str, Any], int]] = {}
        plan: list[_Entry] = []
        done: set[str] = set()
        # (uri, owner kind, expected type, conventional fallback uri, CDU loop)
        queue: list[tuple[str, Kind, str | None, str | None, Any]] = [
            (ROOT, chassis_kind, "ServiceRoot", None, None)
        ]
        while queue:
            uri, owner, expected, fallback, loop = queue.pop(0)
            if uri not in docs:
                if len(docs) >= cfg.max_resources:
                    raise RedfishError(f"walk exceeded max_resources={cfg.max_resources}")
                try:
                    doc, t = self.get(uri)
                except RedfishError as exc:
                    if uri == ROOT:
                        raise
                    self._walk_errors.append(str(exc))  # one bad branch: walk the rest
                    continue
                if doc is None:
                    continue
                docs[uri] = (doc, t)
            doc = docs[uri][0]
            rtype = rmap.resource_type(doc)
            if expected and rtype != expected:
                if fallback and fallback != uri:
                    queue.append((fallback, owner, expected, None, loop))
                continue
            if uri in done:
                continue
            done.add(uri)
            if rtype in ("ThermalEquipment", "ThermalSubsystem"):
                owner = Kind.cooling
            elif rtype == "PowerEquipment":
                owner = Kind.power
            if rtype in _WATCHED:
                plan.append(_Entry(uri, rtype, owner, loop))
            if rtype.endswith("Collection"):
                for m in doc.get("Members") or []:
                    if isinstance(m, dict) and "@odata.id" in m:
                        queue.append((m["@odata.id"].rstrip("/"), owner, None, None, loop))
                continue
            for link, section in _NAV.get(rtype, {}).items():
                target = (
                    (doc.get(link) or {}).get("@odata.id")
                    if isinstance(doc.get(link), dict)
                    else None
                )
                if not target or (section is not None and section not in cfg.sections):
                    continue
                if rtype == "Chassis" and isinstance(doc.get(_SUPERSEDED_BY.get(link, "")), dict):
                    continue  # e.g. Power when PowerSubsystem is there
                child_loop = None
                if link in rmap.CDU_LOOP:
                    child_loop = (uri, rmap.CDU_LOOP[link])  # kept if exactly one member
                # fans cool the chassis they sit in: its kind, not the subsystem's
                child_owner = chassis_kind if link == "Fans" else owner
                queue.append(
                    (
                        target.rstrip("/"),
                        child_owner,
                        _EXPECTED.get(link),
                        f"{uri}/{link}",
                        child_loop,
                    )
                )
        self._drop_loops_with_siblings(plan)
        cited: set[str] = set()
        for e in plan:
            doc = docs[e.uri][0]
            cited |= rmap.property_readings(e.rtype, doc, e.owner_kind)[1]
            cited |= {u for u, _ in rmap.leak_readings(doc) if u}
        plan = [e for e in plan if not (e.rtype in _CITABLE and e.uri in cited)]
        # legacy resources last: their readings give way to newer ones (see _handle)
        plan.sort(key=lambda e: e.rtype in _LEGACY)
        return plan, docs

    @staticmethod
    def _drop_loops_with_siblings(plan: list[_Entry]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for e in plan:
            if e.loop:
                parent = e.uri.rsplit("/", 1)[0]
                counts[(e.loop[0], parent)] = counts.get((e.loop[0], parent), 0) + 1
        for e in plan:
            if e.loop and counts[(e.loop[0], e.uri.rsplit("/", 1)[0])] != 1:
                e.loop = None

    # -- reading -----------------------------------------------------------------------
    def _handle(self, e: _Entry, doc: dict[str, Any], t: int, out: Readings) -> None:
        rack = self.config.rack
        owner_uri = e.uri
        if e.rtype in ("PowerSupplyMetrics", "PowerDistributionMetrics", "EnvironmentMetrics"):
            owner_uri = e.uri.rsplit("/", 1)[0]  # readings belong to the PSU / PDU / chassis
        dev = self.device_id(owner_uri)
        if e.rtype in _LEGACY:
            members = rmap.legacy_members(e.uri, doc)
            single = sum(m.array == "PowerControl" for m in members) == 1
            chassis = e.uri.rsplit("/", 1)[0]
            have = set(zip(out.device_id, out.metric, strict=True))
            for m in members:
                for uri, kind, metric, value in rmap.legacy_readings(m, e.owner_kind, single):
                    d = self.device_id(uri or chassis)
                    if (d, metric) not in have:  # e.g. EnvironmentMetrics' chassis power_w
                        out.add(kind, rack, d, metric, value, t)
        elif e.rtype == "Sensor":
            r = rmap.sensor_reading(doc, e.owner_kind)
            if r is not None:
                out.add(r[0], rack, dev, r[1], r[2], t)
        elif e.rtype in ("LeakDetector", "LeakDetection"):
            for det_uri, state in rmap.leak_readings(doc):
                out.add(
                    Kind.cooling,
                    rack,
                    self.device_id(det_uri or e.uri),
                    "leak_detected",
                    0.0 if state == "OK" else 1.0,
                    t,
                )
        else:
            readings = rmap.property_readings(e.rtype, doc, e.owner_kind)[0]
            for kind, metric, value in readings:
                out.add(kind, rack, dev, metric, value, t)
            if e.loop:
                cdu = self.device_id(e.loop[0])
                for kind, metric, value in readings:
                    if metric in e.loop[1]:
                        out.add(kind, rack, cdu, e.loop[1][metric], value, t)

    def read(self) -> Readings:
        if self.events is None and self.config.events != "off":
            self.events = EventListener(self)
            self.events.start()
        out = self._read_resources()
        if self.events is not None:
            # pushed or logged events since the last read, and the listener's errors
            events, errors = self.events.drain()
            out.events.extend(events)
            if errors:
                out.failed_parts += len(errors)  # the daemon counts them (reason `partial`)
                out.events.append(
                    source_error_event(
                        self.config.device_prefix,
                        f"{len(errors)} Redfish event error(s): {'; '.join(errors[:3])}",
                        {
                            "source": self.name,
                            "reason": "events",
                            "failed": len(errors),
                            "errors_total": self.events.stats.errors,
                        },
                    )
                )
        return out

    def _read_resources(self) -> Readings:
        out = Readings()
        findings: dict[str, tuple[rmap.Finding, str]] = {}
        read_ok: set[str] = set()
        if self._plan is None or time.monotonic() - self._discovered_at > self.config.rediscover_s:
            try:
                self._plan, docs = self._discover()
            except httpx.TransportError as exc:  # unreachable, TLS refused, timed out
                raise RedfishError(f"{self.config.base_url}: {exc!r}") from exc
            self._discovered_at = time.monotonic()
        else:
            docs = {}
        errors: list[str] = list(self._walk_errors) if docs else []
        for e in self._plan:
            try:
                doc, t = docs[e.uri] if e.uri in docs else self.get(e.uri)
            except RedfishError as exc:
                errors.append(str(exc))
                continue
            except httpx.TransportError as exc:
                if not len(out) and not read_ok:
                    raise RedfishError(f"{self.config.base_url}: {exc!r}") from exc
                errors.append(f"GET {e.uri}: {exc!r}; rest of this pass skipped")
                break
            if doc is None:
                self._plan = None  # something was removed: walk again next time
                continue
            read_ok.add(e.uri)
            self._handle(e, doc, t, out)
            for uri, psu in psu_documents(e.rtype, e.uri, doc):
                out.events.extend(self._psu_inventory.events(self.device_id(uri), psu))
            found = rmap.status_findings(e.rtype, e.uri, doc)
            if e.rtype in _LEGACY:
                for m in rmap.legacy_members(e.uri, doc):
                    found += rmap.legacy_findings(m)
            for f in found:
                findings.setdefault(f.key, (f, e.uri))
        if errors and not read_ok:
            raise RedfishError(f"{self.config.base_url}: every resource failed: {errors[0]}")
        out.events.extend(self._events(findings, read_ok))
        if errors:
            out.events.append(
                source_error_event(
                    self.config.device_prefix,
                    f"{len(errors)} Redfish resource(s) failed: {'; '.join(errors[:3])}",
                    {"source": self.name, "failed": len(errors)},
                )
            )
        return out

    def _events(
        self, findings: dict[str, tuple[rmap.Finding, str]], read_ok: set[str]
    ) -> list[Event]:
        """An event when a problem appears, and an info event when it clears."""
        t = now_ms()
        events = []
        for key, (f, _) in findings.items():
            if key not in self._active:
                events.append(
                    Event(
                        device_id=self.device_id(f.uri),
                        kind=f.kind,
                        severity=f.severity,
                        read_time_ms=t,
                        message=f.message,
                        attrs={**f.attrs, "source": self.name},
                    )
                )
        for key, (f, reporter) in list(self._active.items()):
            if key not in findings and reporter in read_ok:
                events.append(
                    Event(
                        device_id=self.device_id(f.uri),
                        kind=EventKind.health_changed,
                        severity="info",
                        read_time_ms=t,
                        message=f"cleared: {f.message}",
                        attrs={**f.attrs, "source": self.name, "cleared": True},
                    )
                )
                del self._active[key]
        self._active.update(findings)
        return events

    def close(self) -> None:
        if self.events is not None:
            self.events.close()  # first: it shares the session deleted below
        try:
            if self._session_uri:
                self.client.delete(self._session_uri, headers={"X-Auth-Token": self._token or ""})
        except httpx.HTTPError as exc:  # the BMC may already be gone; nothing to keep
            log.debug("session logout failed: %s", exc)
        finally:
            self._session_uri = None
            self._token = None
            self.client.close()


# plugin entry points (collectors/sources/__init__.py)
CONFIG_MODEL = RedfishSourceConfig
SOURCE_CLASS = RedfishSource
