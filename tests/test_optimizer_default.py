"""The optimizer's shipped default model (issue 19/26, opt-default): the committed model
for the example site loads and is served only to that site; the site's own model wins;
`dctwin optimize train-default` writes a reproducible version (a short recipe here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from domain.site import load_site
from ingest.store import Store
from simulator.sitegen import synthetic_site
from twin.optimizer.live import LiveConfig, LiveOptimizer
from twin.optimizer.models import PlantModels
from twin.optimizer.recommendations import store_opener
from twin.optimizer.shipped import SHIPPED, SITE, shipped, shipped_for, site_fingerprint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "domain" / "sites" / "example.toml"


def test_the_package_ships_a_small_default_for_the_example_site():
    sm = shipped()
    assert sm is not None, "twin/optimizer/default_model/<version>/ is missing"
    assert sm.path.stat().st_size < 8_000_000  # the package stays small (a few MB)
    assert sm.meta["site_fingerprint"] == site_fingerprint(load_site(EXAMPLE))
    models = PlantModels.load(sm.path)  # gzip-compressed pickle
    assert models.version == sm.version == sm.meta["version"]
    card = (sm.path.parent / "MODEL_CARD.md").read_text()
    for section in ("## Data", "## Split", "## Held-out error", "## Known limits"):
        assert section in card
    assert sm.meta["holdout_error"]["cooling_kw"]["mae"] == pytest.approx(
        models.holdout_error["cooling_kw"]["mae"]
    )


def test_the_default_is_not_served_to_another_site():
    other = synthetic_site(64, racks_per_row=2)
    sm, why = shipped_for(other)
    assert sm is None and "differs" in why and other.site.id in why
    ok, why_ok = shipped_for(load_site(EXAMPLE))
    assert ok is not None and why_ok == "shipped default for this site"


def _live(tmp_path: Path, model_path: Path, site_file: Path) -> LiveOptimizer:
    store = Store(tmp_path / "twin.duckdb")
    sm, note = shipped_for(load_site(site_file))
    return LiveOptimizer(
        LiveConfig(site_id="sv1", model_path=model_path, shipped=sm, shipped_note=note),
        store_opener(store.cursor),
        store.cursor,
    )


def test_live_serves_the_shipped_default_until_the_site_trains_its_own(tmp_path):
    sm = shipped()
    assert sm is not None
    own = tmp_path / "model.pkl"
    opt = _live(tmp_path, own, EXAMPLE)
    st = opt.status()
    assert st["model_source"] == SHIPPED and st["model_version"] == sm.version
    assert st["model"] == str(sm.path)
    # the site's own model appears (a training finished): it is served from the next call
    shutil.copy(sm.path, own)
    st = opt.status()
    assert st["model_source"] == SITE and st["model"] == str(own)


def test_live_on_another_site_says_why_it_has_no_model(tmp_path):
    site_file = tmp_path / "site.toml"
    from simulator.sitegen import site_toml

    site_file.write_text(site_toml(64, racks_per_row=2))
    opt = _live(tmp_path, tmp_path / "absent.pkl", site_file)
    assert opt.propose() is None
    st = opt.status()
    assert st["last_outcome"] == "no_model" and st["model_source"] is None
    assert "shipped default" in st["reason"] and "differs" in st["reason"]


def _train_default(data: Path, out: Path, site_file: Path) -> dict:
    # the shipped recipe on a small site and short periods (the example site: ~10 min)
    run = subprocess.run(
        [sys.executable, "-m", "dctwin.cli.main", "optimize", "train-default", "--quiet",
         "--data", str(data), "--out", str(out), "--periods", "2", "--period-days", "0.4",
         "--site", str(site_file)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_train_default_writes_a_reproducible_version(tmp_path):
    from simulator.sitegen import site_toml

    site_file = tmp_path / "site.toml"
    site_file.write_text(site_toml(64, racks_per_row=2))
    first = _train_default(tmp_path / "h.duckdb", tmp_path / "out", site_file)
    vdir = Path(first["path"])
    assert {p.name for p in vdir.iterdir()} == {"model.pkl", "meta.json", "MODEL_CARD.md"}
    meta = json.loads((vdir / "meta.json").read_text())
    assert meta["exploration"]["seeds"] == [201, 202]
    assert meta["site_fingerprint"] == site_fingerprint(load_site(site_file))
    assert meta["model_bytes"] == (vdir / "model.pkl").stat().st_size
    # the same recipe again (exploration reused from the store): the same model
    again = _train_default(tmp_path / "h.duckdb", tmp_path / "out", site_file)
    assert again["version"] == first["version"]
    assert again["holdout_error"] == first["holdout_error"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == [first["version"]]
