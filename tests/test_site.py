import pytest

from domain.site import SiteFileError, load_site


def test_example_site_shape(site):
    assert len(site.halls) == 1
    assert len(site.halls[0].rows) == 4
    assert len(site.racks()) == 32
    assert site.gpu_count() == 32 * 8 * 8
    ids = [d.id for d in site.devices()]
    assert len(ids) == len(set(ids)), "device ids must be unique"
    assert "sv1/h1/row1/rk101/n01/gpu0" in ids
    assert "sv1/facility/utility" in ids


def test_invalid_file_names_the_field(tmp_path, site):
    text = site.model_dump_json()  # valid as JSON; rebuild a TOML with one bad field
    assert text
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[site]
id = "x"
[templates.t]
nodes = 0
gpus_per_node = 8
gpu_tdp_w = 700
gpu_idle_w = 70
node_overhead_w = 100
psus = 2
psu_rated_w = 3000
liquid_fraction = 0.8
[ups]
rated_kw = 100
[plant]
rated_kw = 100
[[meters]]
id = "u"
role = "facility_input"
[[halls]]
id = "h1"
[[halls.rows]]
id = "r1"
template = "t"
racks = ["a"]
pdu = "p"
cdu = "c"
""")
    with pytest.raises(SiteFileError) as err:
        load_site(bad)
    assert "templates.t.nodes" in str(err.value)
    assert "greater than or equal to 1" in str(err.value)


def test_dangling_reference_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[site]
id = "x"
[templates.t]
nodes = 1
gpus_per_node = 8
gpu_tdp_w = 700
gpu_idle_w = 70
node_overhead_w = 100
psus = 2
psu_rated_w = 3000
liquid_fraction = 0.8
[ups]
rated_kw = 100
[plant]
rated_kw = 100
[[meters]]
id = "u"
role = "facility_input"
[[halls]]
id = "h1"
[[halls.pdus]]
id = "p"
rated_kw = 10
[[halls.rows]]
id = "r1"
template = "t"
racks = ["a"]
pdu = "p"
cdu = "nope"
""")
    with pytest.raises(SiteFileError, match=r"halls\.h1\.rows\.r1\.cdu: no CDU 'nope'"):
        load_site(bad)


def test_unknown_field_is_rejected(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[site]\nid = "x"\ncolour = "blue"\n')
    with pytest.raises(SiteFileError, match=r"site\.colour: Extra inputs are not permitted"):
        load_site(bad)


def test_not_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\n")
    with pytest.raises(SiteFileError, match="not valid TOML"):
        load_site(bad)
