"""Issue 21: one XID catalogue for the collector, the failure features and the alert rules."""

from __future__ import annotations

from pathlib import Path

from collectors.sources.nvml.source import CRITICAL_XIDS as COLLECTOR_CRITICAL
from domain.xids import CRITICAL_XID_CODES, FAILURE_XID_CODES, XIDS, xid_info
from twin.alerts.kinds.events import CRITICAL_XIDS as ALERT_CRITICAL
from twin.alerts.rules import load_rules
from twin.failure.features import XID_COLS

ISSUE_CODES = (13, 31, 43, 45, 48, 61, 62, 63, 64, 68, 74, 79, 92, 94, 95, 119, 120, 140)


def test_catalogue_covers_the_codes_operators_meet_with_an_action_each():
    for code in ISSUE_CODES:
        x = XIDS[code]
        assert x.code == code and x.meaning and x.action, code
        assert x.severity in ("info", "warning", "critical")


def test_collector_features_and_rules_read_the_same_catalogue():
    assert tuple(sorted(COLLECTOR_CRITICAL)) == CRITICAL_XID_CODES == tuple(ALERT_CRITICAL)
    assert [f"xid{c}_2h" for c in FAILURE_XID_CODES] == XID_COLS
    # GSP errors (119, 120) and unrecovered ECC (140) reach the failure features now
    assert {119, 120, 140, 62} <= set(FAILURE_XID_CODES)
    # application faults are not failure features
    assert not {13, 31, 43, 45} & set(FAILURE_XID_CODES)
    rules = load_rules(Path("twin/alerts/default_rules.yaml"))
    xid_rule = next(r for r in rules.rules if r.kind == "xid")
    assert tuple(xid_rule.codes) == CRITICAL_XID_CODES


def test_unknown_code_is_kept_as_a_warning():
    assert xid_info(12345).severity == "warning"
