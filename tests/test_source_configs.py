"""The shipped collector configs in deploy/ validate, and name devices the site knows."""

from __future__ import annotations

import importlib

import pytest

from collectors.config import load_collector_config
from collectors.sources import REGISTRY
from tests.conftest import REPO

CONFIGS = sorted((REPO / "deploy").glob("collector-*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_collector_configs_validate(path, monkeypatch, site):
    monkeypatch.chdir(REPO)  # register_map paths are relative to the working directory
    cfg = load_collector_config(path)
    known = {d.id for d in site.devices()}
    for raw in cfg.sources:
        module, config_cls, _ = REGISTRY[raw["type"]]
        source_cfg = getattr(importlib.import_module(module), config_cls).model_validate(raw)
        if raw["type"] == "nvml":
            assert f"{source_cfg.node_id}/gpu0" in known
        if raw["type"] == "modbus":
            assert source_cfg.device_id in known
        for device_id in getattr(source_cfg, "devices", {}).values():
            assert device_id in known, device_id


def test_every_source_type_is_registered():
    assert set(REGISTRY) >= {"simulated", "nvml", "redfish", "modbus"}
    for module, config_cls, source_cls in REGISTRY.values():
        mod = importlib.import_module(module)
        assert getattr(mod, config_cls).model_fields["type"].default in REGISTRY
        assert callable(getattr(mod, source_cls))
