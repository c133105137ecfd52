"""Rule files: the shipped default set, and errors that name the line."""

from __future__ import annotations

import fnmatch
import re
from typing import Literal

import polars as pl
import pytest

from twin.alerts.conditions import Outcome
from twin.alerts.grouping import fingerprint, site_topology
from twin.alerts.kinds.events import CRITICAL_XIDS
from twin.alerts.receivers import load_receivers
from twin.alerts.rules import RuleBase, glob_regex, load_rules, parse_rules, rule_kind, rule_kinds
from twin.alerts.yaml_files import ConfigError, Matcher, parse_duration

BASE = """rules:
  - name: GpuHot
    kind: threshold
    metric: gpu_temp_c
    value: 85
    annotations: {summary: hot}
"""


def test_default_rule_set_covers_every_kind_with_summary_and_runbook():
    rules = load_rules(None)  # packaged twin/alerts/default_rules.yaml
    kinds = {r.kind for r in rules.rules}
    assert kinds == {
        "threshold",
        "rate",
        "absence",
        "event",
        "leak",
        "xid",
        "pump_failed",
        "psu_failed",
        "anomaly_incident",
        "failure_risk",
        "heat_balance",
        "pue_regression",
        "due_date",
    }
    for r in rules.rules:
        ann = r.annotations.as_dict()
        assert ann["summary"] and ann["runbook_url"], r.name
    xid = next(r for r in rules.rules if r.kind == "xid")
    assert tuple(xid.codes) == CRITICAL_XIDS
    assert len(rules.inhibit_rules) >= 2


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (BASE.replace("value: 85", "value: 85\n    for: 5 minutes"), 6, "invalid duration"),
        (BASE.replace("kind: threshold", "kind: treshold"), 3, "unknown rule kind 'treshold'"),
        (BASE.replace("gpu_temp_c", "gpu_tmp_c"), 4, "similar: ['gpu_temp_c'"),
        (BASE.replace("value: 85", "value: 85\n    clear: 90"), 2, "clear (90.0) must be <="),
        (BASE + BASE.removeprefix("rules:\n"), 7, "duplicate rule name 'GpuHot'"),
        (BASE.replace("value: 85", "value: 85\n    value: 86"), 6, "duplicate key 'value'"),
        (BASE.replace("{summary: hot}", "{summary: hot"), 7, "not valid YAML"),
        (BASE.replace("{summary: hot}", "{summary: '{value'}"), 6, "invalid template"),
        (BASE.replace("value: 85", "value: 85\n    by: [tenant]"), 6, "unknown label 'tenant'"),
        (BASE.replace("value: 85", "value: 85\n    labels: {severity: x}"), 6, "set by the engine"),
        (BASE.replace("value: 85", "value: 85\n    op: '=~'"), 6, "op"),
        (
            BASE + "inhibit_rules:\n  - source_matchers: ['alertname=GpuHot']\n"
            "    target_matchers: ['x==\"y\"']\n",
            9,
            "invalid matcher",
        ),
        (BASE.replace("value: 85", "value: 85\n    thresold: 3"), 6, "Extra inputs"),
    ],
)
def test_errors_name_the_line(text, line, needle):
    with pytest.raises(ConfigError) as err:
        parse_rules(text, "rules.yaml")
    assert err.value.line == line, str(err.value)
    assert needle in str(err.value)
    assert str(err.value).startswith(f"rules.yaml:{line}: ")


def test_unknown_rule_kind_is_a_load_error_naming_file_line_and_known_kinds(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        BASE
        + """  - name: InletHumid
    kind: humidity_band
    metric: gpu_temp_c
    annotations: {summary: humid}
"""
    )
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    known = ", ".join(sorted(rule_kinds()))
    assert str(err.value) == (
        f"{path}:8: rules[1].kind: unknown rule kind 'humidity_band'; known kinds: {known}"
    )
    assert "threshold" in known and "pue_regression" in known

    path.write_text(BASE.replace("    kind: threshold\n", ""))
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    assert str(err.value).startswith(f"{path}:2: rules[0]: rule has no kind (one of: absence, ")


def test_every_rule_kind_has_its_model_and_evaluator():
    """A kind is one registered class: model (with `kind: Literal[name]`) and evaluate().
    None can be left without an evaluator, so evaluation never meets an unknown kind."""
    kinds = rule_kinds()
    shipped = {r.kind for r in load_rules(None).rules}
    assert shipped <= set(kinds)
    for name, model in kinds.items():
        assert issubclass(model, RuleBase)
        assert model.model_fields["kind"].annotation == Literal[name], name
        assert model.evaluate is not RuleBase.evaluate, f"{name} has no evaluate()"
        assert callable(model.evaluate)


def test_a_rule_kind_without_evaluator_or_kind_literal_cannot_register():
    class NoEvaluate(RuleBase):
        kind: Literal["no_evaluate"]

    with pytest.raises(TypeError, match="'no_evaluate' .* does not implement evaluate"):
        rule_kind(NoEvaluate)

    class NoLiteral(RuleBase):
        def evaluate(self, ctx, latched):
            return Outcome()

    with pytest.raises(TypeError, match="kind must be Literal"):
        rule_kind(NoLiteral)

    class Twice(RuleBase):
        kind: Literal["threshold"]

        def evaluate(self, ctx, latched):
            return Outcome()

    with pytest.raises(TypeError, match="registered twice"):
        rule_kind(Twice)
    assert "no_evaluate" not in rule_kinds()


def test_receivers_file_errors_name_the_line(tmp_path, monkeypatch):
    path = tmp_path / "receivers.yaml"
    path.write_text(
        "receivers:\n  - name: oncall\n    type: webhook\n"
        "    url: https://example.invalid/hook\n    secret_env: ONCALL_SECRET\n"
    )
    monkeypatch.delenv("ONCALL_SECRET", raising=False)
    with pytest.raises(
        ConfigError,
        match=r"receivers.yaml:2: receivers\[0\]: secret_env: "
        "environment variable ONCALL_SECRET",
    ):
        load_receivers(path)
    monkeypatch.setenv("ONCALL_SECRET", "abc")
    (r,) = load_receivers(path)
    assert r.secret.get_secret_value() == "abc" and r.public()["has_secret"] is True
    path.write_text("receivers:\n  - name: oncall\n    type: webhook\n    url: ftp://x\n")
    with pytest.raises(ConfigError, match=r"receivers.yaml:4: receivers\[0\]\.url: url must"):
        load_receivers(path)


def test_missing_rules_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read rules file"):
        load_rules(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("7d", 604800), (90, 90)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "-1s", "m", "", True, -3])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_matchers_follow_alertmanager_semantics():
    labels = {"alertname": "GpuHot", "rack": "rk101"}
    assert Matcher.parse('rack="rk101"').matches(labels)
    assert not Matcher.parse('rack=~"rk10"').matches(labels)  # anchored
    assert Matcher.parse('rack=~"rk10.*"').matches(labels)
    assert Matcher.parse('cdu=""').matches(labels)  # a missing label is the empty string
    assert Matcher.parse('alertname!~"Pdu.*"').matches(labels)
    assert not Matcher.parse({"name": "rack", "value": "rk101", "isEqual": False}).matches(labels)
    assert str(Matcher.parse("rack!=rk1")) == 'rack!="rk1"'


def test_fingerprint_is_alertmanagers_fnv1a_over_sorted_labels():
    assert fingerprint({}) == "cbf29ce484222325"  # FNV-1a 64 offset basis: empty label set
    a = fingerprint({"alertname": "X", "rack": "rk1"})
    assert a == fingerprint({"rack": "rk1", "alertname": "X"}) != fingerprint({"alertname": "X"})


def test_topology_from_the_site_model(site):
    topo = site_topology(site)
    gpu = topo.labels_for("sv1/h1/row2/rk203/n04/gpu1")
    assert gpu == {
        "site": "sv1",
        "hall": "h1",
        "row": "row2",
        "rack": "rk203",
        "node": "n04",
        "cdu": "sv1/h1/cdu-row2",
        "pdu": "sv1/h1/pdu-row2",
        "device_id": "sv1/h1/row2/rk203/n04/gpu1",
        "device_class": "gpu",
    }
    assert topo.labels_for("sv1/h1/cdu-row3/pump2")["cdu"] == "sv1/h1/cdu-row3"
    assert topo.class_of("sv1/h1/cdu-row3/pump2") == "cdu"
    assert topo.downstream("sv1/h1/cdu-row4") == [f"rk40{i}" for i in range(1, 9)]
    assert topo.downstream("sv1/h1/pdu-row1") == [f"rk10{i}" for i in range(1, 9)]


def test_serve_refuses_a_bad_rules_file_naming_the_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dctwin.cli.main import app

    bad = tmp_path / "rules.yaml"
    bad.write_text(BASE.replace("value: 85", "value: 85\n    for: soon"))
    monkeypatch.setenv("DCTWIN_ALERT_RULES_FILE", str(bad))
    result = CliRunner().invoke(app, ["serve", "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 2
    assert f"{bad}:6: rules[0].for: invalid duration 'soon'" in result.output


@pytest.mark.parametrize(
    "glob",
    [
        "sv1/h1/row1/*",
        "sv1/*/row?/*gpu[0-3]",
        "*cdu*",
        "a.b/c[[]1]",
        "x[?]y",
        "*gpu[!0]",
        "sv1/h1/row1",
        "*",
        "(a)+{b}|c$",
    ],
)
def test_device_glob_regex_agrees_with_fnmatch_in_python_and_polars(glob):
    ids = [
        "sv1/h1/row1/rk101/n01/gpu0",
        "sv1/h1/row2/rk201/n02/gpu7",
        "sv1/h1/cdu-row1",
        "a.b/c[1]",
        "x?y",
        "(a)+{b}|c$",
        "sv1/h1/row1",
    ]
    want = [fnmatch.fnmatchcase(i, glob) for i in ids]
    regex = glob_regex(glob)
    assert [bool(re.match(regex, i)) for i in ids] == want
    assert pl.Series(ids).str.contains(regex).to_list() == want
