"""BACnet/IP source: chiller plants, CRAHs, BMS controllers (bacpypes3).

A point list (inline `[[sources.points]]` or a `point_list`: a shipped list's name such as
`chiller-plant` in points/, or a TOML file) maps BACnet objects of one device to contract
metrics. Each read polls present-value with ReadPropertyMultiple (ReadProperty per point
when the device rejects it); points marked `cov` are subscribed to (SubscribeCOV) and
their notifications replace polling while the subscription lives. Setpoints are written
through `writer.BacnetWriter` (WriteProperty at a priority, relinquish = write null).

bacpypes3 is asyncio and `read()` is called from the daemon's reader thread, so the
source owns a private event loop in a background thread; the bacpypes3 application lives
on that loop and every request is handed to it with `run_coroutine_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collectors.base import Readings, now_ms, source_error_event
from collectors.point_tables import CountedError, check_metric, load_table
from domain.contract import Kind

if TYPE_CHECKING:
    from bacpypes3.app import Application

log = logging.getLogger(__name__)

T = TypeVar("T")

# The object types whose present-value this source reads (and may write: ao, av, bv).
OBJECT_TYPES = (
    "analog-input",
    "analog-output",
    "analog-value",
    "binary-input",
    "binary-output",
    "binary-value",
)
BINARY_TYPES = ("binary-input", "binary-output", "binary-value")
COMMANDABLE_TYPES = ("analog-output", "analog-value", "binary-output", "binary-value")
MAX_INSTANCE = 4_194_302  # 22-bit instance; 4194303 is the wildcard
MAX_PENDING = 1000  # COV notifications kept per point between two reads
_OBJECT_RE = re.compile(r"^\s*([a-z-]+)\s*,\s*(\d+)\s*$")


def parse_object_id(text: str) -> tuple[str, int]:
    """`"analog-input,1"` -> ("analog-input", 1); a clear ValueError otherwise."""
    m = _OBJECT_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not '<object-type>,<instance>' (e.g. 'analog-input,1')")
    otype, instance = m.group(1), int(m.group(2))
    if otype not in OBJECT_TYPES:
        raise ValueError(f"{text!r}: object type {otype!r} not supported (one of {OBJECT_TYPES})")
    if instance > MAX_INSTANCE:
        raise ValueError(f"{text!r}: instance above {MAX_INSTANCE}")
    return otype, instance


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: str = Field(description="BACnet object id, e.g. 'analog-input,1'")
    metric: str = Field(min_length=1, description="contract metric name")
    kind: Kind | None = Field(None, description="default: the list's or the source's kind")
    device_id: str | None = Field(None, description="absolute device id (default: source's)")
    device_suffix: str | None = Field(None, description="appended to the source's device_id")
    scale: float = Field(1.0, description="value = present-value x scale + offset")
    offset: float = 0.0
    unit: str | None = Field(None, description="checked against the metric's contract unit")
    cov: bool = Field(False, description="subscribe to change-of-value instead of polling")
    writable: bool = Field(False, description="BacnetWriter may command this point")
    min: float | None = Field(None, description="lowest value a write may set (metric unit)")
    max: float | None = Field(None, description="highest value a write may set (metric unit)")

    @field_validator("object")
    @classmethod
    def _object_id(cls, v: str) -> str:
        otype, instance = parse_object_id(v)
        return f"{otype},{instance}"

    @field_validator("scale")
    @classmethod
    def _nonzero_scale(cls, v: float) -> float:
        if v == 0:
            raise ValueError("0 would erase the reading (and make writes impossible)")
        return v

    @model_validator(mode="after")
    def _writable(self) -> Point:
        otype = self.object.split(",")[0]
        if self.writable and otype not in COMMANDABLE_TYPES:
            raise ValueError(f"writable: {otype} has no commandable present-value")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} above max {self.max}")
        return self


class PointListFile(BaseModel):
    """A shipped point list: collectors/sources/bacnet/points/*.toml."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    kind: Kind | None = None
    points: list[Point] = Field(min_length=1)


class BacnetSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["bacnet"] = "bacnet"
    name: str = "bacnet"
    host: str = Field(min_length=1, description="the BACnet/IP device's address (unicast)")
    port: int = Field(47808, ge=1, le=65535, description="its UDP port (0xBAC0)")
    local_address: str = Field(
        "0.0.0.0:0",
        description="ip[/prefix]:port this source binds; port 0 = any free port. Each "
        "BACnet source needs its own port.",
    )
    local_device_instance: int = Field(
        4_194_300, ge=0, le=MAX_INSTANCE, description="this client's own device object id"
    )
    timeout_s: float = Field(1.0, gt=0, le=60, description="per request (APDU timeout)")
    retries: int = Field(0, ge=0, le=5, description="APDU retries after a timeout")
    device_id: str = Field(min_length=1, description="e.g. sv1/facility/chiller1")
    kind: Kind | None = Field(None, description="default kind of the points")
    rack: str = Field(min_length=1, description="partition key: hall id or facility")
    point_list: Path | None = Field(
        None, description="TOML point list: a shipped list's name (points/<name>.toml) or a path"
    )
    points: list[Point] = Field(default_factory=list)
    read_multiple: bool = Field(
        True, description="use ReadPropertyMultiple (falls back by itself when rejected)"
    )
    max_points_per_request: int = Field(16, ge=1, le=200)
    cov_lifetime_s: int = Field(
        120, ge=10, le=86_400, description="SubscribeCOV lifetime; renewed at half of it"
    )
    cov_confirmed: bool = Field(False, description="ask for confirmed COV notifications")
    cov_retry_s: float = Field(
        60.0, gt=0, description="wait before subscribing again after a refused subscription"
    )
    write_priority: int = Field(8, ge=1, le=16, description="default BacnetWriter priority")

    @field_validator("local_address")
    @classmethod
    def _local(cls, v: str) -> str:
        if not re.match(r"^[0-9.]+(/\d{1,2})?(:\d{1,5})?$", v):
            raise ValueError(f"{v!r} is not ip[/prefix][:port], e.g. '10.1.210.5:47809'")
        return v

    @model_validator(mode="after")
    def _load_list_and_check_metrics(self) -> BacnetSourceConfig:
        if self.point_list is not None:
            listed = load_point_list(self.point_list)
            self.kind = self.kind or listed.kind
            self.points = [*listed.points, *self.points]
        if not self.points:
            raise ValueError("points: none configured (inline or via point_list)")
        seen: set[str] = set()
        for i, p in enumerate(self.points):
            if p.object in seen:
                raise ValueError(f"points[{i}].object: {p.object} listed twice")
            seen.add(p.object)
            check_metric(
                f"points[{i}]", p.kind or self.kind, p.metric, p.unit, "point",
                "in the list or the source",
            )  # fmt: skip
        return self


SHIPPED_LISTS = Path(__file__).resolve().parent / "points"


def load_point_list(path: Path) -> PointListFile:
    """Load a point list: a path, or the bare name of a list shipped in `points/`."""
    return load_table(path, SHIPPED_LISTS, PointListFile, "point_list")


class BacnetError(CountedError):
    """A request that failed: `reason` is the counter it goes to."""


def classify(exc: BaseException) -> tuple[str, str]:
    """(counter reason, text) for what bacpypes3 raised. Its Error/Reject/Abort PDUs
    derive from BaseException, so they must be caught by name, never let out."""
    from bacpypes3.apdu import AbortPDU, AbortReason, ErrorPDU, RejectPDU
    from bacpypes3.errors import DecodingError, InvalidTag

    if isinstance(exc, AbortPDU):
        reason = exc.apduAbortRejectReason
        if reason == AbortReason.noResponse:
            return "timeout", "no response (device unreachable or silent)"
        return "abort", f"abort: {reason}"
    if isinstance(exc, RejectPDU):
        return "reject", f"reject: {exc.apduAbortRejectReason}"
    if isinstance(exc, ErrorPDU):
        code = str(getattr(exc, "errorCode", "?"))
        cls_ = str(getattr(exc, "errorClass", "?"))
        if code == "unknown-object":
            return "unknown_object", "unknown-object (no such object on the device)"
        if code == "unknown-property":
            return "unknown_property", "unknown-property"
        return "error", f"error: {cls_}: {code}"
    if isinstance(exc, DecodingError | InvalidTag | ValueError | TypeError):
        return "wrong_type", f"wrong type: {exc}"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout", "no response (device unreachable or silent)"
    return "error", f"{type(exc).__name__}: {exc}"


@dataclass
class _Sub:
    """A COV subscription to one point."""

    process_id: int
    active: bool = False  # the device accepted it and it has not lapsed
    renew_at: float = 0.0  # monotonic: subscribe (again) from this time on
    last: float | None = None  # last notified value (scaled)
    pending: list[tuple[float, int]] = field(default_factory=list)  # (value, ms) since read
    notifications: int = 0


class BacnetClient:
    """One bacpypes3 application on a private event loop in a background thread."""

    def __init__(self, config: BacnetSourceConfig) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"bacnet-{config.name}", daemon=True
        )
        self._thread.start()
        self.app: Application | None = None
        self._lock = threading.Lock()  # one start at a time (reader and writer threads)
        self.on_notification: Any = None  # set by the source: (object id, value, ms) -> None
        self._closed = False

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run a coroutine on the private loop; the caller's thread waits at most timeout_s."""
        if self._closed:
            coro.close()
            raise BacnetError("error", "source closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout_s)
        except TimeoutError as exc:
            fut.cancel()
            raise BacnetError("timeout", f"no result within {timeout_s:g} s") from exc

    def ensure_started(self) -> Application:
        with self._lock:
            if self.app is None:
                self.app = self.call(self._start(), 5.0)
            return self.app

    async def _start(self) -> Application:
        from bacpypes3.app import Application
        from bacpypes3.local.device import DeviceObject
        from bacpypes3.local.networkport import NetworkPortObject

        cfg = self.config
        client = self
        ip, _, port = cfg.local_address.partition(":")
        try:  # bacpypes3 retries a failed bind forever in the background: check first
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                if hasattr(socket, "SO_REUSEPORT"):  # as bacpypes3 binds it
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((ip.split("/")[0], int(port or 47808)))
        except OSError as exc:
            msg = f"cannot bind local address {cfg.local_address}: {exc}"
            raise BacnetError("error", msg) from None

        class _App(Application):
            # COV notifications for our subscriptions; everything else is bacpypes3's
            async def do_UnconfirmedCOVNotificationRequest(self, apdu: Any) -> None:  # noqa: N802
                client._notified(apdu)

            async def do_ConfirmedCOVNotificationRequest(self, apdu: Any) -> None:  # noqa: N802
                from bacpypes3.apdu import SimpleAckPDU

                client._notified(apdu)
                await self.response(SimpleAckPDU(context=apdu))

        device = DeviceObject(
            objectIdentifier=("device", cfg.local_device_instance),
            objectName=f"dctwin-{cfg.name}",
            vendorIdentifier=999,
            apduTimeout=int(cfg.timeout_s * 1000),
            numberOfApduRetries=cfg.retries,
        )
        address = cfg.local_address if "/" in cfg.local_address else _with_prefix(cfg.local_address)
        net = NetworkPortObject(
            address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
        )
        app = _App.from_object_list([device, net])
        # bacpypes3 binds the socket in a task and retries forever on failure: wait for it
        link = next(iter(app.link_layers.values()))
        deadline = time.monotonic() + 3.0
        while getattr(getattr(link, "server", None), "local_transport", None) is None:
            if time.monotonic() > deadline:
                for task in getattr(getattr(link, "server", None), "_transport_tasks", []):
                    task.cancel()  # else it retries the bind forever
                app.close()
                raise BacnetError("error", f"cannot bind local address {cfg.local_address}")
            await asyncio.sleep(0.01)
        return app

    def _notified(self, apdu: Any) -> None:
        from bacpypes3.basetypes import PropertyIdentifier

        t = now_ms()
        oid = apdu.monitoredObjectIdentifier
        key = f"{oid[0]},{oid[1]}"
        for pv in apdu.listOfValues:
            if pv.propertyIdentifier != PropertyIdentifier.presentValue:
                continue
            try:
                value = pv.value.cast_out(present_value_type(str(oid[0])))
            except Exception as exc:  # a wrong type: counted by the source
                value = exc
            if self.on_notification is not None:
                self.on_notification(key, value, t)

    def reset(self) -> None:
        """Drop the application (its socket); the next request starts a new one."""
        with self._lock:
            app, self.app = self.app, None
        if app is not None:
            self._loop.call_soon_threadsafe(app.close)

    def close(self) -> None:
        if self._closed:
            return
        self.reset()
        self._closed = True

        async def _cancel() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(_cancel(), self._loop).result(2.0)
        except Exception as exc:  # closing must not raise
            log.debug("bacnet %s: cancelling tasks: %s", self.config.name, exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2.0)
        if not self._thread.is_alive():
            self._loop.close()


def _with_prefix(address: str) -> str:
    """`ip:port` -> `ip/32:port`: a host address, so bacpypes3 opens no broadcast socket."""
    ip, _, port = address.partition(":")
    return f"{ip}/32:{port}" if port else f"{ip}/32"


def present_value_type(object_type: str) -> Any:
    """The standard's present-value type for an object type (Real or BinaryPV)."""
    from bacpypes3.basetypes import BinaryPV
    from bacpypes3.primitivedata import Real

    return BinaryPV if object_type in BINARY_TYPES else Real


def to_number(object_type: str, value: Any) -> float:
    """A decoded present-value -> float (binary: active 1.0, inactive 0.0)."""
    if object_type in BINARY_TYPES:
        text = str(value)
        if text not in ("active", "inactive"):
            raise ValueError(f"binary present-value {text!r}")
        return 1.0 if text == "active" else 0.0
    return float(value)


class BacnetSource:
    def __init__(self, config: BacnetSourceConfig) -> None:
        self.config = config
        self.name = config.name
        self.points = config.points
        self.by_object = {p.object: p for p in config.points}
        self.device_of = {
            p.object: p.device_id
            or (f"{config.device_id}/{p.device_suffix}" if p.device_suffix else config.device_id)
            for p in config.points
        }
        self.client = BacnetClient(config)
        self.client.on_notification = self._on_notification
        self.subs = {p.object: _Sub(process_id=i + 1) for i, p in enumerate(config.points) if p.cov}
        self.use_rpm = config.read_multiple
        self.errors: Counter[str] = Counter()  # reason -> count, per failed point or request
        self.failing_points: dict[str, str] = {}  # object -> last error text
        self._sub_lock = threading.Lock()  # notifications arrive on the loop thread
        self.where = f"{config.host}:{config.port}"

    # -- COV ------------------------------------------------------------------------------
    def _on_notification(self, obj: str, value: Any, t: int) -> None:
        sub = self.subs.get(obj)
        if sub is None:
            return  # not ours (an old subscription the device still honours)
        p = self.by_object[obj]
        if isinstance(value, BaseException):
            self.errors["wrong_type"] += 1
            log.warning("bacnet %s: COV %s: wrong type: %s", self.name, obj, value)
            return
        try:
            scaled = to_number(p.object.split(",")[0], value) * p.scale + p.offset
        except (ValueError, TypeError) as exc:
            self.errors["wrong_type"] += 1
            log.warning("bacnet %s: COV %s: wrong type: %s", self.name, obj, exc)
            return
        with self._sub_lock:
            if len(sub.pending) >= MAX_PENDING:  # a storm while reads stall: keep the newest
                del sub.pending[0]
                self.errors["cov_dropped"] += 1
            sub.pending.append((scaled, t))
            sub.last = scaled
            sub.notifications += 1

    async def _subscribe(self, app: Application, obj: str, sub: _Sub) -> None:
        from bacpypes3.apdu import SubscribeCOVRequest
        from bacpypes3.pdu import Address
        from bacpypes3.primitivedata import ObjectIdentifier

        cfg = self.config
        req = SubscribeCOVRequest(
            subscriberProcessIdentifier=sub.process_id,
            monitoredObjectIdentifier=ObjectIdentifier(obj),
            issueConfirmedNotifications=cfg.cov_confirmed,
            lifetime=cfg.cov_lifetime_s,
            destination=Address(f"{cfg.host}:{cfg.port}"),
        )
        await app.request(req)

    # -- reading --------------------------------------------------------------------------
    async def _rpm(self, app: Application, objs: list[str]) -> dict[str, Any]:
        """ReadPropertyMultiple of present-value: object -> value or the exception."""
        from bacpypes3.apdu import ReadPropertyMultipleRequest
        from bacpypes3.basetypes import (
            PropertyIdentifier,
            PropertyReference,
            ReadAccessSpecification,
        )
        from bacpypes3.constructeddata import SequenceOf
        from bacpypes3.pdu import Address
        from bacpypes3.primitivedata import ObjectIdentifier

        specs = [
            ReadAccessSpecification(
                objectIdentifier=ObjectIdentifier(o),
                listOfPropertyReferences=[
                    PropertyReference(propertyIdentifier=PropertyIdentifier.presentValue)
                ],
            )
            for o in objs
        ]
        req = ReadPropertyMultipleRequest(
            listOfReadAccessSpecs=SequenceOf(ReadAccessSpecification)(specs),
            destination=Address(f"{self.config.host}:{self.config.port}"),
        )
        resp = await app.request(req)
        out: dict[str, Any] = {}
        for result in resp.listOfReadAccessResults:
            oid = result.objectIdentifier
            key = f"{oid[0]},{oid[1]}"
            for element in result.listOfResults:
                rr = element.readResult
                if rr.propertyAccessError is not None:
                    out[key] = _AccessError(rr.propertyAccessError)
                    continue
                try:  # per element: one wrong type must not lose the others
                    out[key] = rr.propertyValue.cast_out(present_value_type(str(oid[0])))
                except Exception as exc:
                    out[key] = exc
        return out

    async def _rp(self, app: Application, obj: str) -> Any:
        from bacpypes3.basetypes import PropertyIdentifier
        from bacpypes3.pdu import Address
        from bacpypes3.primitivedata import ObjectIdentifier

        return await app.read_property(
            Address(f"{self.config.host}:{self.config.port}"),
            ObjectIdentifier(obj),
            PropertyIdentifier("present-value"),
        )

    async def _poll(self, app: Application, objs: list[str]) -> dict[str, tuple[Any, int]]:
        """present-value of each object: (value or exception, read time ms). A request that
        gets no answer stops the pass (the device is gone; waiting per point is pointless)
        and raises BacnetError("timeout")."""
        from bacpypes3.apdu import ErrorRejectAbortNack, RejectPDU

        got: dict[str, tuple[Any, int]] = {}
        n = self.config.max_points_per_request
        if self.use_rpm:
            for i in range(0, len(objs), n):
                chunk = objs[i : i + n]
                try:
                    values = await self._rpm(app, chunk)
                except ErrorRejectAbortNack as exc:
                    reason, text = classify(exc)
                    if reason == "timeout":
                        raise BacnetError(reason, text) from None
                    if isinstance(exc, RejectPDU) or reason in ("error", "abort"):
                        # no RPM here (unrecognized service, or refused): per point from now
                        log.warning(
                            "bacnet %s: %s: ReadPropertyMultiple refused (%s); "
                            "using ReadProperty per point",
                            self.name,
                            self.where,
                            text,
                        )
                        self.use_rpm = False
                        break
                    raise BacnetError(reason, text) from None
                t = now_ms()
                for o in chunk:
                    got[o] = (values.get(o, _Missing()), t)
            if self.use_rpm:
                return got
        for o in objs:
            if o in got:
                continue
            try:
                value: Any = await self._rp(app, o)
            except ErrorRejectAbortNack as exc:
                reason, text = classify(exc)
                if reason == "timeout":
                    raise BacnetError(reason, f"{o}: {text}") from None
                value = exc
            except Exception as exc:  # decoding: wrong type
                value = exc
            got[o] = (value, now_ms())
        return got

    async def _read_async(self, app: Application) -> tuple[Readings, dict[str, str]]:
        from bacpypes3.apdu import ErrorRejectAbortNack

        cfg = self.config
        out = Readings()
        failed: dict[str, str] = {}
        mono = time.monotonic()
        # COV points whose subscription lives are not polled; with only such points,
        # one is read anyway as a heartbeat (its value comes from its notifications): a
        # silent device must not leave its last notified values repeating as if fresh.
        polled = [p.object for p in self.points if not self._cov_live(p.object)]
        heartbeat = not polled
        if heartbeat:
            polled = [self.points[0].object]
        try:
            got = await self._poll(app, polled)
        except BacnetError as exc:
            for sub in self.subs.values():  # the device may have restarted: subscribe again
                sub.active = False
                sub.renew_at = 0.0
            exc.args = (f"{self.where}: {exc}",)
            raise
        if heartbeat:
            got = {o: v for o, v in got.items() if _failed(v[0])}
        for obj, (value, t) in got.items():
            p = self.by_object[obj]
            if _failed(value):
                reason, text = (
                    value.classify()
                    if isinstance(value, _AccessError | _Missing)
                    else classify(value)
                )
                self.errors[reason] += 1
                failed[obj] = f"{obj} ({p.metric}): {text}"
                continue
            try:
                number = to_number(obj.split(",")[0], value)
            except (ValueError, TypeError) as exc:
                self.errors["wrong_type"] += 1
                failed[obj] = f"{obj} ({p.metric}): wrong type: {exc}"
                continue
            self._add(out, p, number * p.scale + p.offset, t)
        # COV values: each notification since the last read, with its arrival time; with
        # none, the last value again (the device answered this pass and would have notified)
        t_now = now_ms()
        with self._sub_lock:
            for obj, sub in self.subs.items():
                if obj in got or not sub.active:
                    sub.pending.clear()
                    continue
                p = self.by_object[obj]
                if sub.pending:
                    for value, t in sub.pending:
                        self._add(out, p, value, t)
                    sub.pending.clear()
                elif sub.last is not None:
                    self._add(out, p, sub.last, t_now)
        # (re)subscribe what is due: new, lapsing (half the lifetime) or refused earlier
        for obj, sub in self.subs.items():
            if mono < sub.renew_at or obj in failed:
                continue
            try:
                await self._subscribe(app, obj, sub)
            except ErrorRejectAbortNack as exc:
                reason, text = classify(exc)
                self.errors[f"cov_{reason}"] += 1
                sub.active = False
                sub.renew_at = mono + cfg.cov_retry_s
                log.warning(
                    "bacnet %s: %s: SubscribeCOV %s refused (%s); polling it, retry in %g s",
                    self.name,
                    self.where,
                    obj,
                    text,
                    cfg.cov_retry_s,
                )
                if reason == "timeout":
                    break
                continue
            if not sub.active:
                log.info("bacnet %s: %s: subscribed to COV of %s", self.name, self.where, obj)
            sub.active = True
            sub.renew_at = mono + cfg.cov_lifetime_s / 2
        return out, failed

    def _cov_live(self, obj: str) -> bool:
        sub = self.subs.get(obj)
        return (
            sub is not None
            and sub.active
            and sub.last is not None
            and time.monotonic() < sub.renew_at + self.config.cov_lifetime_s / 2
        )

    def _add(self, out: Readings, p: Point, value: float, t: int) -> None:
        kind = p.kind or self.config.kind
        assert kind is not None  # the config's validator requires one
        out.add(kind, self.config.rack, self.device_of[p.object], p.metric, value, t)

    def read(self) -> Readings:
        cfg = self.config
        try:
            app = self.client.ensure_started()
        except BacnetError as exc:
            self.errors[exc.reason] += 1
            self.client.reset()
            raise
        # every request is bounded by timeout_s x (retries + 1); the pass by their sum
        requests = len(self.points) + len(self.subs) + 2
        bound = requests * cfg.timeout_s * (cfg.retries + 1) + 5.0
        try:
            out, failed = self.client.call(self._read_async(app), bound)
        except BacnetError as exc:
            self.errors[exc.reason] += 1
            raise
        self._report(out, failed)
        return out

    def _report(self, out: Readings, failing: dict[str, str]) -> None:
        """Failed points: logged and sent as a source_error event when the set changes
        (an unknown object stays unknown: one event, not one per interval); counted always."""
        out.failed_parts += len(failing)  # the daemon counts them (reason `partial`)
        failed = [failing[o] for o in sorted(failing)]
        if set(failing) != set(self.failing_points):
            if failed:
                log.warning(
                    "bacnet %s: %s: %d point(s) failed, others read: %s",
                    self.name,
                    self.where,
                    len(failed),
                    "; ".join(failed),
                )
                out.events.append(
                    source_error_event(
                        self.config.device_id,
                        f"{len(failed)} BACnet point(s) failed on {self.where}: "
                        + "; ".join(failed[:5]),
                        {"source": self.name, "failed": len(failed)},
                    )
                )
            else:
                log.info("bacnet %s: %s: every point reads again", self.name, self.where)
        else:
            for text in failed:
                log.debug("bacnet %s: %s: still failing: %s", self.name, self.where, text)
        self.failing_points = failing

    def close(self) -> None:
        self.client.close()

    def writer(self) -> Any:
        """A BacnetWriter sharing this source's application (see writer.py)."""
        from collectors.sources.bacnet.writer import BacnetWriter

        return BacnetWriter(self)


class _AccessError:
    """An RPM element's property-access-error (a value in the result, not raised)."""

    def __init__(self, err: Any) -> None:
        self.code = str(getattr(err, "errorCode", "?"))
        self.cls = str(getattr(err, "errorClass", "?"))

    def classify(self) -> tuple[str, str]:
        if self.code == "unknown-object":
            return "unknown_object", "unknown-object (no such object on the device)"
        if self.code == "unknown-property":
            return "unknown_property", "unknown-property"
        return "error", f"error: {self.cls}: {self.code}"


class _Missing:
    """The device's RPM answer left an object out."""

    def classify(self) -> tuple[str, str]:
        return "error", "missing from the ReadPropertyMultiple answer"


def _failed(value: Any) -> bool:
    return isinstance(value, BaseException | _AccessError | _Missing)


# plugin entry points (collectors/sources/__init__.py)
CONFIG_MODEL = BacnetSourceConfig
SOURCE_CLASS = BacnetSource
