"""SNMP source: UPSes (UPS-MIB, RFC 1628) and rack PDUs over SNMP v2c or v3 (pysnmp 7).

An OID map (a shipped map's name such as `ups-mib` in maps/, a TOML file, and/or inline
`[[sources.objects]]`) says which OIDs carry which contract metric and how to scale them.
Scalar objects are read with GET (a few per request); table columns are walked with
GETBULK, all columns of a pass together, and reduced per map entry: the first row, the sum
or the max over rows, or one device per row (PDU outlets).

pysnmp's high-level API is asyncio; `read` is synchronous and runs on the daemon's reader
thread, so the source owns a private event loop and drives it there.

An agent that does not answer, or rejects the credentials, fails the whole pass (raise:
the daemon reports it as a source error). A single OID that the agent lacks or answers
with the wrong type is counted, logged and reported as an event; the other OIDs' readings
go out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from collectors.base import Readings, now_ms, source_error_event
from collectors.point_tables import CountedError, check_metric, load_table
from domain.contract import Kind

if TYPE_CHECKING:
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        SnmpEngine,
        UdpTransportTarget,
        UsmUserData,
    )

log = logging.getLogger(__name__)

_OID = re.compile(r"^\d+(\.\d+)+$")
MAX_ROWS = 10_000  # per column and pass: bounds a walk of an agent that never ends
Rows = Literal["first", "sum", "max", "each"]
AuthProtocol = Literal["none", "md5", "sha", "sha224", "sha256", "sha384", "sha512"]
PrivProtocol = Literal["none", "des", "3des", "aes", "aes128", "aes192", "aes256"]


class SecretRef(BaseModel):
    """A secret kept out of the config file: `{ env = "VAR" }` or `{ file = "/path" }`."""

    model_config = ConfigDict(extra="forbid")

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def resolve(self) -> SecretStr:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ValueError(f"environment variable {self.env} is not set")
            return SecretStr(value)
        assert self.file is not None
        try:
            return SecretStr(self.file.read_text().strip())  # a trailing newline is no key
        except OSError as exc:
            raise ValueError(f"cannot read {self.file}: {exc.strerror}") from exc


def _secret(field: str, value: SecretStr | SecretRef | None) -> SecretStr | None:
    try:
        return value.resolve() if isinstance(value, SecretRef) else value
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from exc


class SnmpObject(BaseModel):
    """One metric from one OID: a scalar instance (GET) or a table column (walked)."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1, description="contract metric name, e.g. battery_charge_pct")
    name: str = Field("", description="MIB object name, for log lines (upsBatteryStatus)")
    oid: str | None = Field(None, description="scalar instance OID (ends in .0), read by GET")
    column: str | None = Field(None, description="table column OID, walked; rows by `rows`")
    rows: Rows = Field(
        "each", description="columns: first row, sum or max over rows, or a device per row"
    )
    row_device: str = Field(
        "{index}", description="rows = each: device id suffix, {index} = the row's index"
    )
    scale: float = 1.0
    offset: float = 0.0
    equals: int | None = Field(
        None, description="bool metrics: 1 when the raw value equals this, else 0"
    )
    unit: str | None = Field(None, description="checked against the metric's contract unit")
    device_suffix: str | None = Field(None, description="appended to the source's device_id")
    kind: Kind | None = Field(None, description="default: the source's kind")

    @model_validator(mode="after")
    def _one_oid(self) -> SnmpObject:
        if (self.oid is None) == (self.column is None):
            raise ValueError(f"{self.metric}: give exactly one of oid (scalar) or column (table)")
        for o in (self.oid, self.column):
            if o is not None and not _OID.match(o.lstrip(".")):
                raise ValueError(f"{self.metric}: {o!r} is not a numeric OID (1.3.6.1...)")
        self.oid = self.oid and self.oid.lstrip(".")
        self.column = self.column and self.column.lstrip(".")
        if "{index}" not in self.row_device:
            raise ValueError(f"{self.metric}: row_device must contain {{index}}")
        return self

    @property
    def label(self) -> str:
        where = self.oid or self.column
        return f"{self.name} ({where})" if self.name else str(where)


class SnmpMapFile(BaseModel):
    """A shipped OID map: collectors/sources/snmp/maps/*.toml."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    kind: Kind | None = None
    objects: list[SnmpObject] = Field(min_length=1)


class SnmpSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["snmp"] = "snmp"
    name: str = "snmp"
    host: str = Field(min_length=1)
    port: int = Field(161, ge=1, le=65535)
    version: Literal["2c", "3"] = "2c"
    community: SecretStr | SecretRef = SecretStr("public")
    user: str = Field("", description="v3 USM user name")
    auth_protocol: AuthProtocol = "sha"
    auth_key: SecretStr | SecretRef | None = None
    priv_protocol: PrivProtocol = "aes"
    priv_key: SecretStr | SecretRef | None = None
    context_name: str = Field("", description="v3 context name (most agents: empty)")
    timeout_s: float = Field(1.0, gt=0, le=60, description="per request")
    retries: int = Field(1, ge=0, le=5)
    max_repetitions: int = Field(25, ge=1, le=200, description="GETBULK rows per request")
    max_oids_per_get: int = Field(20, ge=1, le=100)
    device_id: str = Field(min_length=1, description="e.g. sv1/facility/ups1")
    kind: Kind | None = Field(None, description="default kind of the map's objects")
    rack: str = Field(min_length=1, description="partition key: rack id, hall id or facility")
    map: Path | None = Field(
        None, description="TOML OID map: a shipped map's name (maps/<name>.toml) or a path"
    )
    objects: list[SnmpObject] = Field(default_factory=list)

    @model_validator(mode="after")
    def _load_map_and_check(self) -> SnmpSourceConfig:
        if self.map is not None:
            mapped = load_oid_map(self.map)
            self.kind = self.kind or mapped.kind
            self.objects = [*mapped.objects, *self.objects]
        if not self.objects:
            raise ValueError("objects: none configured (inline or via map)")
        for i, obj in enumerate(self.objects):
            check_metric(
                f"objects[{i}]", obj.kind or self.kind, obj.metric, obj.unit, "object",
                "in the map or the source",
            )  # fmt: skip
        # secrets from env/file are read once, at start-up: a missing one is a config error
        self.community = _secret("community", self.community) or SecretStr("")
        self.auth_key = _secret("auth_key", self.auth_key)
        self.priv_key = _secret("priv_key", self.priv_key)
        if self.version == "3":
            if not self.user:
                raise ValueError("user: required with version = '3'")
            if self.auth_protocol != "none" and self.auth_key is None:
                raise ValueError(f"auth_key: required with auth_protocol = {self.auth_protocol!r}")
            if self.priv_protocol != "none":
                if self.auth_protocol == "none":
                    raise ValueError("priv_protocol: privacy needs authentication (auth_protocol)")
                if self.priv_key is None:
                    raise ValueError(
                        f"priv_key: required with priv_protocol = {self.priv_protocol!r}"
                    )
        return self


SHIPPED_MAPS = Path(__file__).resolve().parent / "maps"


def load_oid_map(path: Path) -> SnmpMapFile:
    """Load an OID map: a path, or the bare name of a map shipped in `maps/`."""
    return load_table(path, SHIPPED_MAPS, SnmpMapFile, "map")


class SnmpError(CountedError):
    """The agent failed the whole pass; `reason` is timeout, auth or agent."""


# pysnmp error indications that mean "these credentials are not accepted"
_AUTH_ERRORS = {
    "WrongDigest",
    "UnknownUserName",
    "UnknownSecurityName",
    "UnsupportedSecurityLevel",
    "UnsupportedAuthProtocol",
    "UnsupportedPrivProtocol",
    "AuthenticationError",
    "AuthenticationFailure",
    "DecryptionError",
    "NotInTimeWindow",
    "UnknownCommunityName",
}


def _classify(indication: Any) -> str:
    cls = type(indication).__name__
    if cls == "RequestTimedOut":
        return "timeout"
    return "auth" if cls in _AUTH_ERRORS else "agent"


@dataclass
class _Pass:
    """What one read collected: raw numbers per object, and per-object failures."""

    # object index -> (raw value, time its response arrived)
    scalars: dict[int, tuple[int, int]] = field(default_factory=dict)
    columns: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)  # col -> rows
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (reason, why)
    walk_time_ms: int = 0  # the walk's last response


def _numeric(value: Any) -> int | None:
    """An SNMP integer type (Integer32, Gauge32, Counter32/64, TimeTicks...) as int."""
    from pyasn1.type import univ

    if isinstance(value, univ.Integer):
        return int(value)
    return None


def _why_not_numeric(value: Any) -> tuple[str, str]:
    from pysnmp.proto import rfc1905

    if isinstance(value, (rfc1905.NoSuchObject, rfc1905.NoSuchInstance)):
        return "no_such_object", type(value).__name__
    if isinstance(value, rfc1905.EndOfMibView):
        return "no_such_object", "endOfMibView"
    shown = value.prettyPrint() if hasattr(value, "prettyPrint") else repr(value)
    return "wrong_type", f"{type(value).__name__} {shown[:40]!r}, expected an integer type"


class SnmpSource:
    def __init__(self, config: SnmpSourceConfig) -> None:
        self.config = config
        self.name = config.name
        self.scalars = [(i, o) for i, o in enumerate(config.objects) if o.oid is not None]
        self.columns = sorted({o.column for o in config.objects if o.column is not None})
        self.errors: Counter[str] = Counter()  # reason -> count, every failure
        self._failing: dict[str, tuple[str, str]] = {}  # label -> (reason, why) last pass
        self._loop = asyncio.new_event_loop()
        self._engine: SnmpEngine | None = None
        self._target: UdpTransportTarget | None = None
        self._auth: CommunityData | UsmUserData | None = None
        self._context: ContextData | None = None
        self._closed = False
        self._mib_view = _numeric_oid_view()

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    # -- pysnmp plumbing (runs inside self._loop) --------------------------------------
    async def _setup(self) -> None:
        from pysnmp.hlapi.v3arch.asyncio import (
            CommunityData,
            ContextData,
            SnmpEngine,
            UdpTransportTarget,
            UsmUserData,
            auth,
        )

        cfg = self.config
        if self._engine is None:
            self._engine = SnmpEngine()  # its dispatcher binds to the running (private) loop
            self._engine.cache["mibViewController"] = self._mib_view
        if self._auth is None:
            if cfg.version == "2c":
                assert isinstance(cfg.community, SecretStr)
                self._auth = CommunityData(cfg.community.get_secret_value(), mpModel=1)
            else:
                self._auth = UsmUserData(
                    cfg.user,
                    authKey=_key(cfg.auth_key),
                    privKey=_key(cfg.priv_key),
                    authProtocol=getattr(auth, _AUTH_PROTOCOLS[cfg.auth_protocol]),
                    privProtocol=getattr(auth, _PRIV_PROTOCOLS[cfg.priv_protocol]),
                )
            self._context = ContextData(contextName=cfg.context_name)
        if self._target is None:
            try:
                self._target = await UdpTransportTarget.create(
                    (cfg.host, cfg.port), timeout=cfg.timeout_s, retries=cfg.retries
                )
            except Exception as exc:  # unresolvable host name: tried again next pass
                raise SnmpError("agent", f"{self.where}: cannot resolve: {exc}") from exc

    def _agent_error(self, indication: Any, what: str) -> SnmpError:
        reason = _classify(indication)
        cfg = self.config
        if reason == "timeout":
            msg = (
                f"{self.where}: no answer to {what} within {cfg.timeout_s:g} s "
                f"x {cfg.retries + 1} tries (agent down, or wrong community/credentials)"
            )
        elif reason == "auth":
            msg = f"{self.where}: {what}: credentials rejected: {indication}"
        else:
            msg = f"{self.where}: {what}: {indication}"
        return SnmpError(reason, msg)

    async def _get(self, objs: list[tuple[int, SnmpObject]], out: _Pass) -> None:
        from pysnmp.hlapi.v3arch.asyncio import ObjectIdentity, ObjectType, get_cmd

        assert self._engine and self._auth and self._target and self._context
        err_ind, err_status, err_index, var_binds = await get_cmd(
            self._engine,
            self._auth,
            self._target,
            self._context,
            *[ObjectType(ObjectIdentity(o.oid)) for _, o in objs],
            lookupMib=False,
        )
        t = now_ms()
        if err_ind:
            raise self._agent_error(err_ind, f"GET {objs[0][1].label}...")
        if err_status:
            if len(objs) > 1:  # e.g. tooBig or genErr on one of them: ask one by one
                for one in objs:
                    await self._get([one], out)
                return
            out.failed[objs[0][1].label] = ("error_status", f"agent answered {err_status}")
            return
        for (i, obj), (_, value) in zip(objs, var_binds, strict=False):
            raw = _numeric(value)
            if raw is None:
                out.failed[obj.label] = _why_not_numeric(value)
            else:
                out.scalars[i] = (raw, t)

    async def _walk(self, out: _Pass) -> None:
        """GETBULK all columns together until each one leaves its subtree."""
        from pysnmp.hlapi.v3arch.asyncio import ObjectIdentity, ObjectType, bulk_cmd

        assert self._engine and self._auth and self._target and self._context
        cfg = self.config
        rows: dict[str, list[tuple[str, Any]]] = {c: [] for c in self.columns}
        cursor = {c: c for c in self.columns}  # last OID seen per column
        active = list(self.columns)
        while active:
            err_ind, err_status, _, var_binds = await bulk_cmd(
                self._engine,
                self._auth,
                self._target,
                self._context,
                0,
                cfg.max_repetitions,
                *[ObjectType(ObjectIdentity(cursor[c])) for c in active],
                lookupMib=False,
            )
            out.walk_time_ms = now_ms()
            if err_ind:
                raise self._agent_error(err_ind, f"GETBULK {active[0]}...")
            if err_status:
                for c in active:
                    out.failed[c] = ("error_status", f"walk: agent answered {err_status}")
                    rows.pop(c, None)
                break
            still = []
            for k, c in enumerate(active):
                prefix = c + "."
                done = False
                for name, value in var_binds[k :: len(active)]:
                    oid = str(name)
                    if not oid.startswith(prefix) or _end_of_mib(value):
                        done = True
                        break
                    if _oid_key(oid) <= _oid_key(cursor[c]):
                        out.failed[c] = ("agent", f"walk: OID not increasing at {oid}")
                        done = True
                        break
                    rows[c].append((oid[len(prefix) :], value))
                    cursor[c] = oid
                if not var_binds[k :: len(active)]:
                    done = True
                if len(rows[c]) >= MAX_ROWS:
                    out.failed[c] = ("agent", f"walk: more than {MAX_ROWS} rows; cut")
                    done = True
                if not done:
                    still.append(c)
            active = still
        out.columns.update(rows)

    async def _read_pass(self) -> _Pass:
        await self._setup()
        out = _Pass()
        n = self.config.max_oids_per_get
        for k in range(0, len(self.scalars), n):
            await self._get(self.scalars[k : k + n], out)
        if self.columns:
            await self._walk(out)
        return out

    # -- turning raw values into readings ------------------------------------------------
    @staticmethod
    def _convert(obj: SnmpObject, raw: int) -> float:
        if obj.equals is not None:
            return 1.0 if raw == obj.equals else 0.0
        # decimal arithmetic: 499 x 0.1 is 49.9, not 49.900000000000006
        return float(Decimal(raw) * Decimal(repr(obj.scale)) + Decimal(repr(obj.offset)))

    def _emit(self, p: _Pass, out: Readings) -> None:
        cfg = self.config
        t = p.walk_time_ms
        for i, obj in enumerate(cfg.objects):
            kind = obj.kind or cfg.kind
            assert kind is not None  # the config's validator requires one
            dev = f"{cfg.device_id}/{obj.device_suffix}" if obj.device_suffix else cfg.device_id
            if obj.oid is not None:
                if i in p.scalars:
                    raw, t_get = p.scalars[i]
                    out.add(kind, cfg.rack, dev, obj.metric, self._convert(obj, raw), t_get)
                continue
            assert obj.column is not None
            if obj.column in p.failed:
                continue
            values: list[tuple[str, float]] = []
            for index, value in p.columns.get(obj.column, []):
                cell = _numeric(value)
                if cell is None:
                    p.failed[f"{obj.label}.{index}"] = _why_not_numeric(value)
                    continue
                values.append((index, self._convert(obj, cell)))
            if not values:
                if not any(k.startswith(f"{obj.label}.") for k in p.failed):
                    p.failed[obj.label] = ("no_such_object", "table column has no rows")
                continue
            if obj.rows == "each":
                for index, v in values:
                    row_dev = f"{dev}/{obj.row_device.format(index=index)}"
                    out.add(kind, cfg.rack, row_dev, obj.metric, v, t)
            else:
                v = (
                    values[0][1]
                    if obj.rows == "first"
                    else sum(v for _, v in values)
                    if obj.rows == "sum"
                    else max(v for _, v in values)
                )
                out.add(kind, cfg.rack, dev, obj.metric, v, t)

    def _report(self, failed: dict[str, tuple[str, str]], out: Readings) -> None:
        """Count every failure; log and raise an event only when one starts or changes."""
        for reason, _ in failed.values():
            self.errors[reason] += 1
        out.failed_parts += len(failed)  # the daemon counts them (reason `partial`)
        new = {k: v for k, v in failed.items() if self._failing.get(k) != v}
        for label, (reason, why) in new.items():
            log.warning("snmp source %s: %s %s: %s: %s", self.name, self.where, label, reason, why)
        for label in self._failing.keys() - failed.keys():
            log.info("snmp source %s: %s %s reads again", self.name, self.where, label)
        self._failing = dict(failed)
        if new:
            shown = "; ".join(f"{k}: {r}: {w}" for k, (r, w) in list(new.items())[:3])
            out.events.append(
                source_error_event(
                    self.config.device_id,
                    f"{len(new)} SNMP object(s) failed on {self.where}: {shown}",
                    {
                        "source": self.name,
                        "failed": len(failed),
                        **Counter(r for r, _ in failed.values()),  # reason -> objects
                    },
                )
            )

    def read(self) -> Readings:
        if self._closed:
            raise SnmpError("agent", f"{self.where}: source is closed")
        try:
            p = self._loop.run_until_complete(self._read_pass())
        except SnmpError as exc:
            self.errors[exc.reason] += 1
            if exc.reason == "timeout":
                # start the next pass afresh: a new socket (the old one may hold an ICMP
                # error from the dead agent) and, for v3, a new engine discovery, since a
                # restarted agent has new boots/time values
                self._drop_engine()
            raise
        out = Readings()
        self._emit(p, out)
        self._report(p.failed, out)
        return out

    def _drop_engine(self) -> None:
        engine, self._engine, self._target, self._auth = self._engine, None, None, None
        if engine is None:
            return
        try:
            engine.close_dispatcher()
            # let the transports' close callbacks run while the loop still exists
            self._loop.run_until_complete(asyncio.sleep(0))
        except Exception as exc:  # a half-open socket: nothing in it to keep
            log.debug("snmp source %s: closing the engine: %s", self.name, exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._drop_engine()
        finally:
            self._loop.close()


class _NoMibCompiler:
    """Stands in for pysmi's compiler: a MIB that is not pre-compiled stays not found."""

    def compile(self, *names: str, **_: Any) -> dict[str, str]:
        return dict.fromkeys(names, "missing")


def _numeric_oid_view() -> Any:
    """A MIB view for numeric OIDs, built once per source, outside any read deadline.

    pysnmp resolves every request OID through a MIB view, and a new view sets up pysmi's
    MIB compiler when pysmi is installed (a dev dependency of snmpsim): seconds of parser
    building and ~15 MB per process. The source asks by numeric OID only, so the view gets
    a compiler that compiles nothing, which pysnmp then never replaces. The source re-uses
    this one view for every engine it creates.
    """
    from pysnmp.hlapi.v3arch.asyncio import ObjectIdentity, ObjectType
    from pysnmp.proto.rfc1902 import Null
    from pysnmp.smi import builder, view

    mib_builder = builder.MibBuilder()
    mib_builder.set_mib_compiler(_NoMibCompiler(), "")
    mib_view = view.MibViewController(mib_builder)
    ObjectType(ObjectIdentity("1.3.6.1.2.1.1.1.0"), Null("")).resolve_with_mib(mib_view)
    return mib_view


def _key(secret: SecretStr | SecretRef | None) -> str | None:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else None


def _end_of_mib(value: Any) -> bool:
    from pysnmp.proto import rfc1905

    return isinstance(value, rfc1905.EndOfMibView)


def _oid_key(oid: str) -> tuple[int, ...]:
    return tuple(int(x) for x in oid.split("."))


# protocol name -> the pysnmp constant (pysnmp.hlapi.v3arch.asyncio.auth)
_AUTH_PROTOCOLS = {
    "none": "USM_AUTH_NONE",
    "md5": "USM_AUTH_HMAC96_MD5",
    "sha": "USM_AUTH_HMAC96_SHA",
    "sha224": "USM_AUTH_HMAC128_SHA224",
    "sha256": "USM_AUTH_HMAC192_SHA256",
    "sha384": "USM_AUTH_HMAC256_SHA384",
    "sha512": "USM_AUTH_HMAC384_SHA512",
}
_PRIV_PROTOCOLS = {
    "none": "USM_PRIV_NONE",
    "des": "USM_PRIV_CBC56_DES",
    "3des": "USM_PRIV_CBC168_3DES",
    "aes": "USM_PRIV_CFB128_AES",
    "aes128": "USM_PRIV_CFB128_AES",
    "aes192": "USM_PRIV_CFB192_AES",
    "aes256": "USM_PRIV_CFB256_AES",
}


# plugin entry points (collectors/sources/__init__.py)
CONFIG_MODEL = SnmpSourceConfig
SOURCE_CLASS = SnmpSource
