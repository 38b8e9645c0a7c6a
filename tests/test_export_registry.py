"""export.registry: versions, manifests, listing, promote/lookup in models.config, and the CLI.

No TensorFlow model is needed: versions are fake directories with a placeholder saved_model.pb
and a hand-written manifest.
"""

import json
import os
import subprocess
import sys

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from export import registry
from export.registry import RegistryError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _signatures():
    def spec(dtype, shape):
        return {"dtype": dtype, "shape": shape}
    outputs = {"click": spec("float32", [-1]), "purchase": spec("float32", [-1]),
               "price_range": spec("float32", [-1, -1]), "demand": spec("float32", [-1])}
    inputs = {f"feature_{i}": spec("string", [-1]) for i in range(16)}
    return {"serving_default": {"inputs": inputs, "outputs": outputs},
            "predict_examples": {"inputs": {"examples": spec("string", [-1])},
                                 "outputs": outputs}}


def make_version(base, name, version, *, step=1000, metrics=None, manifest=True,
                 saved_model=True):
    """A fake exported version B/NAME/V with a placeholder saved_model.pb and a manifest."""
    vdir = os.path.join(base, name, str(version))
    os.makedirs(os.path.join(vdir, "variables"), exist_ok=True)
    os.makedirs(os.path.join(vdir, "assets.extra"), exist_ok=True)
    if saved_model:
        from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        meta = proto.meta_graphs.add()
        meta.signature_def["serving_default"].CopyFrom(meta_graph_pb2.SignatureDef())
        with open(os.path.join(vdir, "saved_model.pb"), "wb") as f:
            f.write(proto.SerializeToString())
        with open(os.path.join(vdir, "variables", "variables.index"), "wb") as f:
            f.write(b"index")
    if manifest:
        data = {
            "name": name, "version": int(version),
            "export_time": f"2026-11-28T19:3{int(version) % 10}:00Z",
            "model_dir": f"/runs/{name}-{version}", "model": "bert_mtl", "preset": "small",
            "step": step,
            "metrics": ({"click/auc": 0.69, "purchase/auc": 0.70, "price_range/accuracy": 0.4,
                         "demand/poisson_deviance": 2.6} if metrics is None else metrics),
            "signatures": _signatures(), "tensorflow_version": "2.21.0",
        }
        with open(os.path.join(vdir, registry.MANIFEST_PATH), "w") as f:
            json.dump(data, f)
    return vdir


@pytest.fixture
def base(tmp_path):
    b = str(tmp_path / "exports")
    make_version(b, "shop", 1, step=100)
    make_version(b, "shop", 2, step=200)
    make_version(b, "shop", 3, step=300)
    return b


def parse_config(base):
    config = model_server_config_pb2.ModelServerConfig()
    with open(os.path.join(base, "models.config")) as f:
        text_format.Parse(f.read(), config)
    return config


def entry(config, name):
    (found,) = [c for c in config.model_config_list.config if c.name == name]
    return found


def cli(base, *args):
    return subprocess.run([sys.executable, "-m", "export.registry", "--export_base", base, *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


# -- versions and manifests ----------------------------------------------------------------------


def test_versions_ignore_temp_non_integer_and_incomplete_dirs(base):
    shop = os.path.join(base, "shop")
    os.makedirs(os.path.join(shop, ".tmp-v4-1234-abcd", "variables"))
    open(os.path.join(shop, ".tmp-v4-1234-abcd", "saved_model.pb"), "w").close()
    os.makedirs(os.path.join(shop, "latest"))
    os.makedirs(os.path.join(shop, "0"))
    open(os.path.join(shop, "0", "saved_model.pb"), "w").close()
    make_version(base, "shop", 10)
    make_version(base, "shop", 11, saved_model=False)  # half-written: not a version
    open(os.path.join(shop, "12"), "w").close()  # a file, not a directory
    assert registry.versions(base, "shop") == [1, 2, 3, 10]


def test_versions_of_unknown_model_names_known_models(base):
    with pytest.raises(RegistryError, match=r"no model 'nope'.*models in .*: shop"):
        registry.versions(base, "nope")
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.versions(base, "../shop")


def test_read_manifest_latest_and_specific(base):
    assert registry.read_manifest(base, "shop")["version"] == 3
    assert registry.read_manifest(base, "shop", 1)["step"] == 100
    with pytest.raises(RegistryError, match=r"no version 7 .*existing versions: 1, 2, 3"):
        registry.read_manifest(base, "shop", 7)


def test_read_manifest_missing_or_broken(base):
    make_version(base, "bare", 1, manifest=False)
    with pytest.raises(RegistryError, match=r"'bare' version 1 has no manifest.*ecom_zoo_manifest"):
        registry.read_manifest(base, "bare")
    with open(os.path.join(base, "shop", "2", registry.MANIFEST_PATH), "w") as f:
        f.write("{not json")
    with pytest.raises(RegistryError, match="cannot read manifest"):
        registry.read_manifest(base, "shop", 2)


def test_signature_summary():
    assert (registry.signature_summary(_signatures())
            == "serving_default(16 in → 4 out), predict_examples(1 in → 4 out)")
    assert registry.signature_summary({}) == "-"


def test_pretty_json_round_trips_and_keeps_tensor_specs_on_one_line():
    manifest = {"name": "shop", "metrics": {}, "signatures": _signatures(), "tags": []}
    text = registry.pretty_json(manifest)
    assert json.loads(text) == manifest
    assert '"price_range": {"dtype": "float32", "shape": [-1, -1]}' in text


# -- list ----------------------------------------------------------------------------------------


def test_list_rows(base):
    make_version(base, "other", 5, metrics={})
    os.makedirs(os.path.join(base, "empty", ".tmp-v1-99-ffff"))
    os.makedirs(os.path.join(base, ".hidden"))
    registry.promote(base, "shop", 2, "stable")
    registry.promote(base, "shop", 3, "canary")

    rows = registry.list_models(base)
    assert [(r["name"], r["version"], r["status"]) for r in rows] == [
        ("empty", None, "no versions"), ("other", 5, "ok"),
        ("shop", 1, "ok"), ("shop", 2, "ok"), ("shop", 3, "ok")]
    shop2 = rows[3]
    assert shop2["labels"] == ["stable"] and rows[4]["labels"] == ["canary"]
    assert rows[2]["labels"] == []
    assert shop2["model_dir"] == "/runs/shop-2" and shop2["step"] == 200
    assert shop2["export_time"] == "2026-11-28T19:32:00Z"
    assert shop2["metrics"]["click/auc"] == pytest.approx(0.69)
    assert shop2["signatures"].startswith("serving_default(16 in → 4 out)")
    assert rows[1]["metrics"] == {}

    table = registry.format_table(rows)
    assert "click/auc" in table and "0.6900" in table and "stable" in table
    assert "no versions" in table


def test_list_reports_labelled_version_missing_on_disk(base):
    registry.promote(base, "shop", 1, "stable")
    os.remove(os.path.join(base, "shop", "1", "saved_model.pb"))
    rows = {r["version"]: r for r in registry.list_models(base) if r["name"] == "shop"}
    assert rows[1]["status"] == "missing" and rows[1]["labels"] == ["stable"]


# -- promote and lookup --------------------------------------------------------------------------


def test_promote_creates_config(base):
    assert not os.path.exists(os.path.join(base, "models.config"))
    assert registry.read_config(base) == model_server_config_pb2.ModelServerConfig()
    path = registry.promote(base, "shop", 2, "stable")
    assert path == os.path.join(base, "models.config")
    shop = entry(parse_config(base), "shop")
    assert shop.base_path == os.path.abspath(os.path.join(base, "shop"))
    assert shop.model_platform == "tensorflow"
    assert dict(shop.version_labels) == {"stable": 2}
    assert list(shop.model_version_policy.specific.versions) == [2]
    assert registry.labels(base, "shop") == {"stable": 2}
    # no temp file is left behind next to the config
    assert not [f for f in os.listdir(base) if f.startswith(".models.config.")
                and f.endswith(".tmp")]


def test_promote_for_a_container_writes_its_base_path(base):
    """`--serving_base_path /models`: the config names the paths the server sees inside the
    container that mounts the export base at /models (TF Serving's README command)."""
    registry.promote(base, "shop", 2, "stable", serving_base_path="/models")
    assert entry(parse_config(base), "shop").base_path == "/models/shop"
    done = cli(base, "promote", "shop", "3", "--label", "canary",
               "--serving_base_path", "/srv/exports")
    assert done.returncode == 0, done.stderr
    shop = entry(parse_config(base), "shop")
    assert shop.base_path == "/srv/exports/shop"
    assert dict(shop.version_labels) == {"stable": 2, "canary": 3}
    with pytest.raises(registry.RegistryError, match="absolute path"):
        registry.promote(base, "shop", 2, "stable", serving_base_path="models")


def test_promote_two_labels(base):
    registry.promote(base, "shop", 1, "stable")
    registry.promote(base, "shop", 3, "canary")
    shop = entry(parse_config(base), "shop")
    assert dict(shop.version_labels) == {"stable": 1, "canary": 3}
    assert list(shop.model_version_policy.specific.versions) == [1, 3]
    assert registry.lookup(base, "shop", "stable") == 1
    assert registry.lookup(base, "shop", "canary") == 3


def test_moving_a_label_drops_the_old_version(base):
    registry.promote(base, "shop", 1, "stable")
    registry.promote(base, "shop", 2, "canary")
    registry.promote(base, "shop", 2, "stable")
    shop = entry(parse_config(base), "shop")
    assert dict(shop.version_labels) == {"stable": 2, "canary": 2}
    assert list(shop.model_version_policy.specific.versions) == [2]
    registry.promote(base, "shop", 3, "canary")
    shop = entry(parse_config(base), "shop")
    assert list(shop.model_version_policy.specific.versions) == [2, 3]


def test_promote_preserves_other_models_and_fields(base):
    other = ('model_config_list {\n'
             '  config {\n'
             '    name: "other"\n'
             '    base_path: "/srv/models/other"\n'
             '    model_platform: "tensorflow"\n'
             '    model_version_policy { latest { num_versions: 2 } }\n'
             '  }\n'
             '  config {\n'
             '    name: "shop"\n'
             '    base_path: "/custom/shop"\n'
             '    model_platform: "tensorflow"\n'
             '    version_labels { key: "stable" value: 1 }\n'
             '    logging_config { sampling_config { sampling_rate: 0.5 } }\n'
             '  }\n'
             '}\n')
    with open(os.path.join(base, "models.config"), "w") as f:
        f.write(other)
    before = entry(parse_config(base), "other")

    registry.promote(base, "shop", 3, "canary")
    config = parse_config(base)
    assert [c.name for c in config.model_config_list.config] == ["other", "shop"]
    assert entry(config, "other") == before
    shop = entry(config, "shop")
    assert shop.base_path == "/custom/shop"
    assert shop.logging_config.sampling_config.sampling_rate == pytest.approx(0.5)
    assert dict(shop.version_labels) == {"stable": 1, "canary": 3}
    assert list(shop.model_version_policy.specific.versions) == [1, 3]


def test_promote_missing_version_lists_existing(base):
    with pytest.raises(RegistryError, match=r"'shop' has no version 9.*existing versions: 1, 2, 3"):
        registry.promote(base, "shop", 9, "stable")
    with pytest.raises(RegistryError, match="no model 'nope'"):
        registry.promote(base, "nope", 1, "stable")
    assert not os.path.exists(os.path.join(base, "models.config"))


def test_promote_refuses_a_broken_version(base):
    vdir = os.path.join(base, "shop", "2")
    with open(os.path.join(vdir, "saved_model.pb"), "wb") as f:
        f.write(b"\xff\xfe not a protobuf")
    with pytest.raises(RegistryError, match=r"shop/2/saved_model.pb: not a readable SavedModel"):
        registry.promote(base, "shop", 2, "stable")
    os.remove(os.path.join(base, "shop", "3", "variables", "variables.index"))
    with pytest.raises(RegistryError, match="variables.index is missing"):
        registry.promote(base, "shop", 3, "stable")
    assert not os.path.exists(os.path.join(base, "models.config"))
    registry.promote(base, "shop", 1, "stable")  # a whole version still goes through


@pytest.mark.parametrize("label", ["", "Stable", "has space", "a/b"])
def test_promote_rejects_bad_labels(base, label):
    with pytest.raises(RegistryError, match="invalid label"):
        registry.promote(base, "shop", 1, label)


@pytest.mark.parametrize("version", [0, -1, "x", "01", True])
def test_promote_rejects_bad_versions(base, version):
    with pytest.raises(RegistryError, match="invalid version"):
        registry.promote(base, "shop", version, "stable")


def test_lookup_errors_list_known_models_and_labels(base):
    with pytest.raises(RegistryError, match=r"'shop' is not in .*models.config.*none"):
        registry.lookup(base, "shop", "stable")
    registry.promote(base, "shop", 2, "stable")
    with pytest.raises(RegistryError, match=r"not in .*models there: shop"):
        registry.lookup(base, "nope", "stable")
    with pytest.raises(RegistryError, match=r"no label 'canary'.*labels: stable=2"):
        registry.lookup(base, "shop", "canary")


def test_read_config_rejects_garbage(base):
    with open(os.path.join(base, "models.config"), "w") as f:
        f.write("this is not a config {")
    with pytest.raises(RegistryError, match="not a ModelServerConfig"):
        registry.read_config(base)


def test_registry_error_is_value_error():
    assert issubclass(RegistryError, ValueError)


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_promote_lookup_list_show(base):
    done = cli(base, "promote", "shop", "2", "--label", "stable")
    assert done.returncode == 0, done.stderr
    assert "stable -> version 2" in done.stdout

    done = cli(base, "lookup", "shop", "--label", "stable")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2\n"

    done = cli(base, "list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("MODEL") and "SIGNATURES" in lines[0]
    assert len(lines) == 4
    assert "stable" in lines[2] and "/runs/shop-2" in lines[2]
    assert "predict_examples(1 in → 4 out)" in lines[2]

    done = cli(base, "show", "shop", "2")
    assert done.returncode == 0, done.stderr
    assert "# labels: stable" in done.stdout
    body = "\n".join(l for l in done.stdout.splitlines() if not l.startswith("#"))
    assert json.loads(body)["step"] == 200

    done = cli(base, "show", "shop")
    assert done.returncode == 0, done.stderr
    assert "# labels: none" in done.stdout and '"version": 3' in done.stdout


def test_cli_errors_exit_2(base):
    done = cli(base, "lookup", "shop", "--label", "stable")
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.startswith("error: ")

    done = cli(base, "promote", "shop", "9", "--label", "stable")
    assert done.returncode == 2
    assert "existing versions: 1, 2, 3" in done.stderr

    done = cli(base, "promote", "shop", "1")
    assert done.returncode == 2 and "--label" in done.stderr

    done = cli(base, "frobnicate")
    assert done.returncode == 2 and "unknown command" in done.stderr
