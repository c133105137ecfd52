"""The shipped collector configs in deploy/ validate, and name devices the site knows."""

from __future__ import annotations

import importlib

import pytest

import collectors.sources
from collectors.daemon_config import load_collector_config
from collectors.sources import build_source, source_types
from tests.conftest import REPO

CONFIGS = sorted((REPO / "deploy").glob("collector-*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_collector_configs_validate(path, monkeypatch, site):
    monkeypatch.chdir(REPO)  # register_map paths are relative to the working directory
    for secret in ("UPS_SNMP_AUTH_KEY", "UPS_SNMP_PRIV_KEY"):  # read when the config loads
        monkeypatch.setenv(secret, "not-the-real-key")
    cfg = load_collector_config(path)
    known = {d.id for d in site.devices()}
    for raw in cfg.sources:
        module = importlib.import_module(f"collectors.sources.{raw['type']}.source")
        source_cfg = module.CONFIG_MODEL.model_validate(cfg.source_table(raw))
        if raw["type"] == "nvml":
            assert f"{source_cfg.node_id}/gpu0" in known
        if raw["type"] in ("modbus", "snmp", "bacnet"):
            assert source_cfg.device_id in known
        for device_id in getattr(source_cfg, "devices", {}).values():
            assert device_id in known, device_id


def test_every_plugin_folder_is_a_complete_source():
    """Each folder in collectors/sources/ is found by its type and ships what an operator
    needs: the source and config model, a README and a sample config that validates."""
    types = source_types()
    assert set(types) >= {"simulated", "nvml", "redfish", "modbus"}
    for kind in types:
        mod = importlib.import_module(f"collectors.sources.{kind}.source")
        assert mod.CONFIG_MODEL.model_fields["type"].default == kind
        assert callable(mod.SOURCE_CLASS)
        folder = REPO / "collectors" / "sources" / kind
        assert (folder / "README.md").is_file(), kind
        # a regular package: the import-linter contracts do not see namespace packages
        assert (folder / "__init__.py").is_file(), kind
        sample = load_collector_config(folder / "sample.toml")
        assert [raw["type"] for raw in sample.sources] == [kind]


PLUGIN = """
from typing import Literal

from pydantic import BaseModel

from collectors.base import Readings


class EchoConfig(BaseModel):
    type: Literal["echo"] = "echo"
    name: str = "echo"


class EchoSource:
    def __init__(self, config: EchoConfig) -> None:
        self.name = config.name

    def read(self) -> Readings:
        return Readings()

    def close(self) -> None:
        pass


CONFIG_MODEL = EchoConfig
SOURCE_CLASS = EchoSource
"""


def test_a_new_source_is_one_folder_and_nothing_else(tmp_path, monkeypatch):
    """Adding a device type needs no registry edit: a folder with `source.py` is found by
    its name and built from a config that names it."""
    (tmp_path / "echo").mkdir()
    (tmp_path / "echo" / "__init__.py").write_text("")
    (tmp_path / "echo" / "source.py").write_text(PLUGIN)
    monkeypatch.setattr(
        collectors.sources, "__path__", [*collectors.sources.__path__, str(tmp_path)]
    )
    assert "echo" in source_types()
    source = build_source({"type": "echo", "name": "probe"}, 0)
    assert source.name == "probe" and len(source.read()) == 0
    with pytest.raises(ValueError, match=r"sources\[3\]\.type: unknown source type 'ecco'"):
        build_source({"type": "ecco"}, 3)
