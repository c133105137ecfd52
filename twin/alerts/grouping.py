"""Topology labels, Alertmanager fingerprints, inhibition and notification groups.

Topology comes from the twin's topology graph (twin.topology) through `site_topology`, the
one function that knows it: every alert about a device carries the labels of where it sits and
what serves it (`rack`, `row`, `hall`, the `cdu` whose loop cools it, the `pdu` that feeds
it). Inhibition is Alertmanager's (`source_matchers`, `target_matchers`, `equal`), so with
`equal: [cdu]` a failed pump mutes GPU-temperature alerts of exactly the racks its loop
cools, and with `equal: [pdu]` a dead PDU mutes device-lost alerts downstream of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import polars as pl

from domain.site import Site
from twin.alerts.rules import InhibitRule
from twin.topology import Topology as TwinTopology

# -- fingerprint ------------------------------------------------------------------------

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEP = 0xFF


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's label-set fingerprint (prometheus/common model.LabelSet.Fingerprint:
    FNV-1a 64 over sorted name, 0xff, value, 0xff), as 16 hex digits."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for b in part.encode():
                h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ _SEP) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


# -- topology ---------------------------------------------------------------------------


@dataclass
class AlertTopology:
    """Labels per known id (device or rack prefix) and what serves what."""

    entity_labels: dict[str, dict[str, str]]
    device_class: dict[str, str]
    downstream_racks: dict[str, list[str]]  # cdu / pdu device id -> rack ids it serves
    site_id: str = ""
    # device id -> its attributes from the site file (a UPS: its battery's
    # required_ride_through_s, replace_by, ...); rules compare readings against them
    attributes: dict[str, dict[str, float | str]] = field(default_factory=dict)
    _cache: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    _classes: pl.DataFrame | None = field(default=None, repr=False)

    def labels_for(self, device_id: str) -> dict[str, str]:
        """Topology labels of a device: its own class plus those of the nearest known
        ancestor (a GPU inherits its rack's cdu and pdu; `cdu-row1/pump2` its CDU's)."""
        hit = self._cache.get(device_id)
        if hit is not None:
            return hit
        parts = device_id.split("/")
        labels: dict[str, str] = {}
        for depth in range(len(parts), 0, -1):
            known = self.entity_labels.get("/".join(parts[:depth]))
            if known is not None:
                labels = dict(known)
                if depth == 4 and len(parts) >= 6:  # site/hall/row/rack/node/device
                    labels["node"] = parts[4]
                break
        labels["device_id"] = device_id
        cls = self.device_class.get(device_id)
        if cls:
            labels["device_class"] = cls
        self._cache[device_id] = labels
        return labels

    def class_of(self, device_id: str) -> str | None:
        """Device class of the device or of its nearest known ancestor (a pump of a CDU)."""
        parts = device_id.split("/")
        for depth in range(len(parts), 0, -1):
            cls = self.device_class.get("/".join(parts[:depth]))
            if cls:
                return cls
        return None

    def downstream(self, entity_id: str) -> list[str]:
        return self.downstream_racks.get(entity_id, [])

    def class_frame(self) -> pl.DataFrame:
        if self._classes is None:
            self._classes = pl.DataFrame(
                {
                    "device_id": list(self.device_class),
                    "device_class": list(self.device_class.values()),
                }
            )
        return self._classes


def site_topology(site: Site) -> AlertTopology:
    """What each CDU loop cools and what each PDU feeds, read from the twin's topology graph
    (twin.topology: cooling chain CDU -> rack, power chain PDU -> rack power shelf)."""
    graph = TwinTopology(site)
    sid = site.site.id
    entity: dict[str, dict[str, str]] = {sid: {"site": sid}}
    downstream: dict[str, list[str]] = {}
    for n in graph.nodes.values():
        if n.cls == "rack":
            entity[n.id] = {
                "site": sid,
                "hall": n.hall or "",
                "row": n.row or "",
                "rack": n.rack or "",
            }
        elif n.cls in ("cdu", "pdu", "crah"):
            entity[n.id] = {"site": sid, "hall": n.hall or ""}
            if n.cls != "crah":
                entity[n.id][n.cls] = n.id
        elif n.cls in ("meter", "ups", "chiller_plant"):
            entity[n.id] = {"site": sid}
    for n in graph.nodes.values():
        if n.cls == "cdu":
            racks = graph.cools(n.id, "rack")
        elif n.cls == "pdu":  # PDU -> each rack's power shelf
            racks = [shelf.rsplit("/", 1)[0] for shelf in graph.downstream(n.id, "power", "shelf")]
        else:
            continue
        for rack in racks:
            entity[rack][n.cls] = n.id
            downstream.setdefault(n.id, []).append(graph.nodes[rack].rack or rack)
    classes = {d.id: d.device_class for d in site.devices()}
    attributes: dict[str, dict[str, float | str]] = {}
    for n in graph.nodes.values():
        owner = n.id
        if n.cls == "ups_battery":  # the battery reports through its UPS's agent
            owner = graph.children(n.id, "power")[0]
        elif n.id not in classes:
            continue
        for k, v in (n.attrs or {}).items():
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                attributes.setdefault(owner, {})[k] = v
    return AlertTopology(entity, classes, downstream, site_id=sid, attributes=attributes)


# -- inhibition -------------------------------------------------------------------------


def inhibitions(
    rules: list[InhibitRule], firing: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """target fingerprint -> fingerprint of the firing source alert that inhibits it.
    Sources count while firing, even when they are silenced (as in Alertmanager)."""
    out: dict[str, str] = {}
    for rule in rules:
        sources: dict[tuple[str, ...], str] = {}
        for fp, labels in firing.items():
            if all(m.matches(labels) for m in rule.source_matchers) and all(
                k in labels for k in rule.equal
            ):
                sources.setdefault(tuple(labels[k] for k in rule.equal), fp)
        if not sources:
            continue
        for fp, labels in firing.items():
            if fp in out or not all(m.matches(labels) for m in rule.target_matchers):
                continue
            src = sources.get(tuple(labels.get(k, "") for k in rule.equal))
            if src is not None and src != fp:
                out[fp] = src
    return out


# -- notification groups ----------------------------------------------------------------


def group_labels(labels: Mapping[str, str], group_by: Iterable[str]) -> dict[str, str]:
    return {k: labels[k] for k in group_by if k in labels}


def label_set_str(labels: Mapping[str, str]) -> str:
    """Prometheus LabelSet.String(): {a="1", b="2"} with sorted names."""
    inner = ", ".join(f'{k}="{_escape(labels[k])}"' for k in sorted(labels))
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def group_key(receiver: str, labels: Mapping[str, str]) -> str:
    """Alertmanager's groupKey shape: route key, ':', the group's label set."""
    return f'{{}}/{{receiver="{receiver}"}}:' + label_set_str(labels)
