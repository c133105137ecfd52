"""Anomaly incidents: device alarms grouped by topology and time, one per problem.

A device *alarms* in an interval when its score is at or above ``alarm_score``. An alarm
*joins* the open incident it is related to (topology below); an alarm related to no open
incident *opens* one when it is strong (``open_score``) or persistent (``open_streak``
alarming intervals in a row), so a single marginal interval does not page anyone. An
incident is *resolved* after ``quiet_intervals`` without an alarm from any of its devices.

Relations come from the site topology (twin/topology.py), collapsed onto scored devices:
a device's *parents* are the nearest scored devices above it in the power and cooling
chains (walking through nodes, shelves, racks and hall air, which have no score of their
own): a GPU's parents are its rack's PSUs and CDU, a PSU's its PDU and (air-cooled) its
hall's CRAHs, a CDU's and a CRAH's the chiller plant and the utility meter, a PDU's the
UPS. An alarm is related to an incident when it is a parent or a child of one of its
devices, or shares a *group key* with one (the same node or rack: GPUs of one rack share
coolant and power, so what goes wrong in a rack shows on its neighbours first).

The suspected root cause is ranked per incident (``root_rule``, chosen on development
seeds, docs/anomaly.md): the devices that are parents of other alarming devices in the
incident first, then earliest first alarm, then the smallest p (strongest evidence).

The per-interval work is a polars filter of the scores down to alarming rows; the
grouping then runs over alarms (few), not over samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import polars as pl

from domain.site import Site
from twin.anomaly.frames import device_table
from twin.topology import Topology

# unscored topology nodes the relation walks through to the next scored device
PASS_THROUGH = frozenset({"node", "shelf", "rack", "hall_air"})
# the scorer's component for a device that stopped reporting (twin/anomaly/fleet.py)
SILENT_COMPONENT = "no_data"
# classes whose devices sit above the rack: an incident rooted at one is a facility problem
FACILITY = frozenset({"cdu", "crah", "pdu", "ups", "chiller_plant", "meter"})

INCIDENTS_TABLE = """
CREATE TABLE IF NOT EXISTS anomaly_incidents (
    id VARCHAR PRIMARY KEY,
    state VARCHAR NOT NULL,
    opened_bucket BIGINT NOT NULL,
    last_bucket BIGINT NOT NULL,
    root_device VARCHAR,
    doc JSON NOT NULL
)"""


@dataclass(frozen=True)
class IncidentConfig:
    alarm_score: float = 0.6  # a device alarms at or above this
    open_score: float = 0.9  # an unrelated alarm this strong opens an incident at once
    open_streak: int = 10  # ... or this many alarming intervals in a row
    quiet_intervals: int = 60  # resolved after this many intervals without an alarm
    # a related device joins an open incident only while its alarm starts within this
    # many intervals of the incident's latest new device: a device alarming hours into a
    # long incident (a failed CRAH that never recovers) is a new problem, not fan-out
    join_intervals: int = 20
    # ... except children of a member of these classes: a liquid loop or a power feed
    # couples its children tightly, and they alarm when the parent's fault gets worse
    # (a pump failing after degrading), however long after the incident opened
    anytime_parents: tuple[str, ...] = ()  # ("cdu", "pdu") lost recall on dev seeds
    # a member of an incident resolved less than this long ago reopens it (intermittent
    # alarms of one problem are one incident)
    reopen_intervals: int = 240
    # an incident that took this many devices within join_intervals is a storm (a site-wide
    # load or cooling change): any alarm starting while it grows joins it, related or not
    storm_devices: int = 0  # 0: off (on development seeds it swallowed real faults)
    # grouping ignores parent links of devices that feed more than this many (a CRAH is
    # the parent of every rack in its hall: one CRAH incident swallowed every GPU fault
    # on dev seeds); the strict relation of the evaluation keeps them
    max_fanout: int = 64
    # group keys: devices sharing one are related ("node", "rack")
    group_keys: tuple[str, ...] = ("node", "rack")
    root_rule: str = "earliest"  # "earliest", "upstream" or "strongest" (dev seeds chose)
    # "earliest": of the devices that alarmed within this many intervals of the first,
    # the strongest (a lost GPU's node-mates alarm in the same interval as it does)
    root_window: int = 2
    critical_score: float = 0.9  # severity critical at or above (else warning)
    max_members: int = 200  # evidence keeps this many devices (the strongest)


@dataclass
class Member:
    device_id: str
    device_class: str
    first_bucket: int
    last_bucket: int
    peak_score: float
    min_p: float
    top_metric: str | None
    top_component: str | None
    alarm_intervals: int = 1


@dataclass
class Incident:
    id: str
    opened_bucket: int
    last_bucket: int
    members: dict[str, Member] = field(default_factory=dict)
    resolved_bucket: int | None = None
    root: list[str] = field(default_factory=list)  # ranked device ids
    grown_bucket: int = -1  # when the latest new device joined
    first_root: str | None = None  # root cause when it opened

    @property
    def state(self) -> str:
        return "open" if self.resolved_bucket is None else "resolved"

    @property
    def peak_score(self) -> float:
        return max(m.peak_score for m in list(self.members.values()))

    def to_doc(self) -> dict:
        return {
            "id": self.id,
            "opened_bucket": self.opened_bucket,
            "last_bucket": self.last_bucket,
            "resolved_bucket": self.resolved_bucket,
            "root": self.root,
            "grown_bucket": self.grown_bucket,
            "first_root": self.first_root,
            "members": [asdict(m) for m in self.members.values()],
        }

    @classmethod
    def from_doc(cls, doc: dict) -> Incident:
        inc = cls(
            doc["id"],
            doc["opened_bucket"],
            doc["last_bucket"],
            resolved_bucket=doc["resolved_bucket"],
            root=list(doc["root"]),
            first_root=doc.get("first_root"),
            grown_bucket=doc.get("grown_bucket", doc["opened_bucket"]),
        )
        inc.members = {m["device_id"]: Member(**m) for m in doc["members"]}
        return inc


class Relations:
    """Scored-device parents/children and group keys of a site (see module docstring)."""

    def __init__(self, site: Site, group_keys: Iterable[str] = ("node", "rack")) -> None:
        devices = device_table(site)
        self.class_of: dict[str, str] = dict(
            zip(devices["device_id"].to_list(), devices["device_class"].to_list(), strict=True)
        )
        topo = Topology(site)
        # a meter stands in for the unscored point it measures (the utility feed)
        stand_in: dict[str, str] = {}
        for node in topo.nodes.values():
            for m in (node.attrs or {}).get("meters", []):
                if node.id not in self.class_of and m in self.class_of:
                    stand_in[node.id] = m
        self.parents: dict[str, set[str]] = {d: set() for d in self.class_of}
        for d in self.class_of:
            for chain in ("power", "cooling"):
                todo, seen = list(topo.up[chain].get(d, [])), set()
                while todo:
                    n = todo.pop()
                    if n in seen:
                        continue
                    seen.add(n)
                    scored = n if n in self.class_of else stand_in.get(n)
                    if scored is not None:
                        self.parents[d].add(scored)
                    elif n in topo.nodes and topo.nodes[n].cls in PASS_THROUGH:
                        todo.extend(topo.up[chain].get(n, []))
        # air-cooled PSUs: the hall's CRAHs (the topology's air path ends at racks)
        psus = devices.filter(pl.col("device_class") == "psu")
        crahs = devices.filter(pl.col("device_class") == "crah")
        for psu, hall in psus.select("device_id", "hall").iter_rows():
            self.parents[psu] |= set(crahs.filter(pl.col("hall") == hall)["device_id"])
        # a meter measuring a scored device is its child (the UPS output meter)
        for node in topo.nodes.values():
            for m in (node.attrs or {}).get("meters", []):
                if node.id in self.class_of and m in self.class_of:
                    self.parents[m].add(node.id)
        self.children: dict[str, set[str]] = {d: set() for d in self.class_of}
        for d, ps in self.parents.items():
            for p in ps:
                self.children.setdefault(p, set()).add(d)
        keys = set(group_keys)
        rack_of = dict(
            zip(devices["device_id"].to_list(), devices["rack_id"].to_list(), strict=True)
        )
        self.keys: dict[str, frozenset[str]] = {}
        for d, cls in self.class_of.items():
            k: set[str] = set()
            if "rack" in keys and rack_of.get(d):
                k.add(f"rack:{rack_of[d]}")
            if "node" in keys and cls == "gpu":
                k.add(f"node:{d.rsplit('/', 1)[0]}")
            self.keys[d] = frozenset(k)

    def neighbours(self, device_id: str) -> set[str]:
        """Direct scored parents and children (the strict relation of the evaluation)."""
        return self.parents.get(device_id, set()) | self.children.get(device_id, set())

    def group_neighbours(self, device_id: str, max_fanout: int) -> set[str]:
        """`neighbours` without links through a parent of more than ``max_fanout``."""
        kids = self.children.get(device_id, set())
        out = set() if len(kids) > max_fanout else set(kids)
        out |= {
            p for p in self.parents.get(device_id, set()) if len(self.children[p]) <= max_fanout
        }
        return out


class IncidentTracker:
    """Open, grow, rank and resolve incidents from per-interval device scores.

    Deterministic: the same score stream gives the same incidents (ids included), so the
    evaluation replays exactly what the live service does."""

    def __init__(self, site: Site, config: IncidentConfig | None = None) -> None:
        self.config = config or IncidentConfig()
        self.rel = Relations(site, self.config.group_keys)
        self.incidents: dict[str, Incident] = {}  # every incident, open and resolved
        self.open: list[str] = []  # ids, in the order they opened
        self.streak: dict[str, tuple[int, int]] = {}  # device -> (last alarm bucket, run)
        self.changed: set[str] = set()  # ids changed since `take_changed`
        self.until = -1  # last bucket seen

    # -- feeding ----------------------------------------------------------------------

    def update(self, dev: pl.DataFrame) -> set[str]:
        """Feed one batch of device scores (device_id, bucket, score, p, top_metric,
        top_component), in time order after earlier batches; returns the incident ids
        that changed."""
        if dev.height == 0:
            return set()
        c = self.config
        hi = int(dev["bucket"].max())  # type: ignore[arg-type]
        alarms = (
            dev.filter((pl.col("score") >= c.alarm_score) & (pl.col("bucket") > self.until))
            .select("device_id", "bucket", "score", "p", "top_metric", "top_component")
            .sort("bucket", "p", "device_id")
        )
        changed: set[str] = set()
        cur = self.until
        for row in alarms.iter_rows():
            b = row[1]
            if b != cur:
                changed |= self._resolve_quiet(b)
                cur = b
            changed |= self._alarm(*row)
        self.until = max(self.until, hi)
        changed |= self._resolve_quiet(self.until + 1)
        for i in changed:
            self._rank(self.incidents[i])
        self.changed |= changed
        return changed

    def _alarm(
        self,
        device_id: str,
        bucket: int,
        score: float,
        p: float,
        top_metric: str | None,
        top_component: str | None,
    ) -> set[str]:
        c = self.config
        last, run = self.streak.get(device_id, (-10, 0))
        run = run + 1 if bucket - last <= 1 else 1
        self.streak[device_id] = (bucket, run)
        inc = self._related_open(device_id, bucket)
        if inc is None:
            if score < c.open_score and run < c.open_streak:
                return set()
            inc = self._reopen(device_id, bucket)
        if inc is None:
            seed = f"{device_id}@{bucket}".encode()
            inc = Incident("inc-" + hashlib.sha1(seed).hexdigest()[:12], bucket, bucket)
            self.incidents[inc.id] = inc
            self.open.append(inc.id)
        m = inc.members.get(device_id)
        if m is None:
            inc.grown_bucket = bucket
            inc.members[device_id] = Member(
                device_id,
                self.rel.class_of.get(device_id, "?"),
                bucket,
                bucket,
                float(score),
                float(p),
                top_metric,
                top_component,
            )
        else:
            m.last_bucket = bucket
            m.alarm_intervals += 1
            if p < m.min_p:
                m.min_p, m.top_metric, m.top_component = float(p), top_metric, top_component
            m.peak_score = max(m.peak_score, float(score))
        inc.last_bucket = max(inc.last_bucket, bucket)
        return {inc.id}

    def _related_open(self, device_id: str, bucket: int) -> Incident | None:
        """The open incident this device is in, else the earliest one it may join."""
        for i in self.open:
            if device_id in self.incidents[i].members:
                return self.incidents[i]
        near = self.rel.group_neighbours(device_id, self.config.max_fanout)
        keys = self.rel.keys.get(device_id, frozenset())
        tight = {
            p
            for p in self.rel.parents.get(device_id, set())
            if self.rel.class_of.get(p) in self.config.anytime_parents
        }
        for i in self.open:
            inc = self.incidents[i]
            if not tight.isdisjoint(inc.members):
                return inc
            if bucket - inc.grown_bucket > self.config.join_intervals:
                continue
            if 0 < self.config.storm_devices <= len(inc.members):
                return inc
            if not near.isdisjoint(inc.members):
                return inc
            if keys and any(not keys.isdisjoint(self.rel.keys[m]) for m in inc.members):
                return inc
        return None

    def _reopen(self, device_id: str, bucket: int) -> Incident | None:
        """The latest incident this device was in, if resolved recently: reopened."""
        best: Incident | None = None
        for inc in self.incidents.values():
            if (
                inc.resolved_bucket is not None
                and device_id in inc.members
                and bucket - inc.last_bucket <= self.config.reopen_intervals
                and (best is None or inc.last_bucket > best.last_bucket)
            ):
                best = inc
        if best is not None:
            best.resolved_bucket = None
            self.open.append(best.id)
        return best

    def _resolve_quiet(self, bucket: int) -> set[str]:
        q = self.config.quiet_intervals
        done = [i for i in self.open if bucket - self.incidents[i].last_bucket > q]
        for i in done:
            inc = self.incidents[i]
            inc.resolved_bucket = inc.last_bucket + q
            self.open.remove(i)
        return set(done)

    # -- root cause -------------------------------------------------------------------

    def _rank(self, inc: Incident) -> None:
        ms = list(inc.members.values())
        ids = set(inc.members)
        first = min(m.first_bucket for m in ms)
        rule = self.config.root_rule

        def key(m: Member) -> tuple:
            if rule == "strongest":
                return (m.min_p, m.first_bucket, m.device_id)
            if rule == "earliest":
                late = m.first_bucket - first > self.config.root_window
                # issue 20 part anom2: a device that went silent explains what its
                # neighbours do next (a GPU off the bus: its node is drained, and the
                # node-mates' power falls with a far smaller p than k empty intervals
                # can reach), never the other way round
                silent = m.top_component == SILENT_COMPONENT
                return (late, not silent, m.min_p if not late else m.first_bucket, m.device_id)
            # upstream: a device whose children alarm with it explains them
            explains = len(self.rel.children.get(m.device_id, set()) & ids)
            return (-min(explains, 1), m.first_bucket, m.min_p, m.device_id)

        inc.root = [m.device_id for m in sorted(ms, key=key)]
        if inc.first_root is None:
            inc.first_root = inc.root[0]

    def take_changed(self) -> set[str]:
        out, self.changed = self.changed, set()
        return out

    # -- views ------------------------------------------------------------------------

    def restore(self, docs: Iterable[dict]) -> None:
        """Load persisted incidents (open ones carry on)."""
        for d in sorted(docs, key=lambda d: (d["opened_bucket"], d["id"])):
            inc = Incident.from_doc(d)
            if inc.grown_bucket < 0:
                inc.grown_bucket = inc.opened_bucket
            self.incidents[inc.id] = inc
            if inc.resolved_bucket is None:
                self.open.append(inc.id)
            self.until = max(self.until, inc.last_bucket)

    def frame(self) -> pl.DataFrame:
        """One row per incident: id, state, opened/last/resolved bucket, root, devices."""
        rows = [
            {
                "id": inc.id,
                "state": inc.state,
                "opened_bucket": inc.opened_bucket,
                "last_bucket": inc.last_bucket,
                "resolved_bucket": inc.resolved_bucket,
                "root_device": inc.root[0] if inc.root else None,
                "first_root": inc.first_root,
                "devices": len(inc.members),
                "peak_score": inc.peak_score,
            }
            for inc in self.incidents.values()
        ]
        return pl.DataFrame(
            rows,
            schema={
                "id": pl.String,
                "state": pl.String,
                "opened_bucket": pl.Int64,
                "last_bucket": pl.Int64,
                "resolved_bucket": pl.Int64,
                "root_device": pl.String,
                "first_root": pl.String,
                "devices": pl.Int64,
                "peak_score": pl.Float64,
            },
        )

    def severity(self, inc: Incident) -> str:
        return "critical" if inc.peak_score >= self.config.critical_score else "warning"
