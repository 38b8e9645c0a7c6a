"""The model registry and `python -m zoo`: listing, errors, every preset builds, save/load."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import zoo
from zoo.registry import ModelSpec, Registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_PRESETS = [(name, preset) for name, presets in zoo.list_models().items()
               for preset in presets]
# Families built as Keras models (gbdt is LightGBM: trained and tested in test_gbdt.py).
KERAS_PRESETS = [(name, preset) for name, preset in ALL_PRESETS
                 if zoo.spec(name).trainer == "keras"]
# Presets too big to run on a CPU test machine: only built and counted.
BUILD_ONLY = {"base"}


def test_list_has_bert_mtl_presets():
    listing = zoo.list()
    assert listing["bert_mtl"] == ("tiny", "small", "small_minilm", "base")
    assert zoo.describe("bert_mtl")["presets"]["tiny"]["hidden_dim"] == 32


def test_unknown_model_error_lists_known_names():
    with pytest.raises(zoo.UnknownModelError) as info:
        zoo.get("no_such_model", "tiny")
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)
    assert "no_such_model" in str(info.value) and "bert_mtl" in str(info.value)
    with pytest.raises(KeyError):
        zoo.describe("no_such_model")


def test_unknown_preset_error_lists_known_presets():
    with pytest.raises(zoo.UnknownPresetError) as info:
        zoo.get("bert_mtl", "huge")
    message = str(info.value)
    assert "huge" in message
    for preset in ("tiny", "small", "base"):
        assert preset in message
    with pytest.raises(ValueError):
        zoo.get_config("bert_mtl", "huge")


def test_unknown_override_is_an_error_and_overrides_apply():
    with pytest.raises(zoo.UnknownConfigKeyError, match="hidden_dim"):
        zoo.get_config("bert_mtl", "tiny", hiden_dim=64)
    config = zoo.get_config("bert_mtl", "tiny", hidden_dim=48, num_layers=2)
    assert config["hidden_dim"] == 48 and config["num_layers"] == 2
    assert config["preset"] == "tiny"
    # The stored preset is untouched.
    assert zoo.get_config("bert_mtl", "tiny")["hidden_dim"] == 32


def test_registry_rejects_duplicates_and_bad_default():
    reg = Registry()
    spec = ModelSpec("m", builder=lambda config: config, presets={"a": {"x": 1}},
                     description="d", default_preset="a")
    reg.register(spec)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(spec)
    with pytest.raises(ValueError, match="default preset"):
        reg.register(ModelSpec("n", builder=dict, presets={"a": {}}, description="d"))
    assert reg.get("m", "a", x=2) == {"x": 2, "preset": "a"}


def test_cli_list_prints_every_preset_with_parameter_counts():
    result = subprocess.run([sys.executable, "-m", "zoo", "list"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^(\w+)\s+(\w+)\s+([\d,]+)\s+\S", line)
        if match:
            counts[(match.group(1), match.group(2))] = int(match.group(3).replace(",", ""))
    assert set(counts) == set(KERAS_PRESETS), result.stdout
    # The tree family is listed, without a parameter count, and says it is not exported.
    gbdt = [line for line in result.stdout.splitlines() if line.startswith("gbdt ")]
    assert len(gbdt) == 2 and all("not exported to TF Serving" in line for line in gbdt)
    assert counts[("bert_mtl", "tiny")] == zoo.count_params(zoo.get("bert_mtl", "tiny"))
    assert (counts[("bert_mtl", "tiny")] < counts[("bert_mtl", "small")]
            < counts[("bert_mtl", "base")])


def test_cli_describe_and_unknown_name():
    result = subprocess.run([sys.executable, "-m", "zoo", "describe", "bert_mtl"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for preset in ("tiny", "small", "base"):
        assert f"preset '{preset}'" in result.stdout
    assert '"hidden_dim": 768' in result.stdout
    result = subprocess.run([sys.executable, "-m", "zoo", "describe", "nope"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "bert_mtl" in result.stderr


@pytest.mark.parametrize("name,preset", KERAS_PRESETS)
def test_every_preset_builds(name, preset):
    import keras

    from zoo.models.testing import random_raw_batch, split_labels

    if preset in BUILD_ONLY:
        params = zoo.count_preset_params(name, preset)
        # The retriever's towers are small beside a ranker's encoder.
        assert params > (10_000_000 if zoo.spec(name).task == "retrieval" else 50_000_000)
        return
    model = zoo.get(name, preset)
    assert zoo.count_params(model) == zoo.count_preset_params(name, preset) > 0
    features, _ = split_labels(random_raw_batch(batch_size=2, history_length=50, seed=3))
    if zoo.spec(name).task == "retrieval":
        outputs = model(model.preprocess(features), training=False)
        assert set(outputs) == {"query_embedding", "item_embedding", "sampling_probability"}
    else:
        outputs = model(model.preprocessor(features), training=False)
        assert set(outputs) == {"click", "purchase", "price_range", "demand"}
    assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(v))) for v in outputs.values())


def test_save_and_reload_tiny_gives_identical_outputs(tmp_path):
    import keras

    from zoo.models.bert_mtl import end_to_end, fit_vocabulary
    from zoo.models.testing import random_raw_batch, split_labels

    train, _ = split_labels(random_raw_batch(batch_size=64, history_length=50, seed=0))
    vocab = fit_vocabulary(train, "tiny")
    model = zoo.get("bert_mtl", "tiny", vocabulary=vocab)
    features, _ = split_labels(random_raw_batch(batch_size=16, history_length=50, seed=1))
    before = {k: keras.ops.convert_to_numpy(v)
              for k, v in model(model.preprocessor(features)).items()}

    path = str(tmp_path / "tiny.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True is the default
    assert type(loaded) is type(model)
    assert loaded.preprocessor is not None
    assert loaded.preprocessor.vocabulary == model.preprocessor.vocabulary
    after = loaded(loaded.preprocessor(features))
    serving = end_to_end(loaded)(features)
    for key, value in before.items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(after[key]), value,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(serving[key]), value,
                                   rtol=1e-5, atol=1e-6)
    # The comparison can fail: a freshly initialised model gives other outputs.
    fresh = zoo.get("bert_mtl", "tiny", vocabulary=vocab)
    other = keras.ops.convert_to_numpy(fresh(fresh.preprocessor(features))["price_range"])
    assert not np.allclose(other, before["price_range"], atol=1e-6)


def test_registry_fit_vocabulary_dispatches_to_the_family():
    features = {"item_id": np.array([b"x", b"y", b"x", b""], dtype=object),
                "hist_item_id": np.array([["y", "y", ""]], dtype=object)}
    vocab = zoo.fit_vocabulary("bert_mtl", features, "tiny")
    assert vocab["item_id"] == ["y", "x"]  # bytes decoded, most frequent first, "" dropped
    with pytest.raises(zoo.UnknownModelError):
        zoo.fit_vocabulary("no_such_model", features)


def test_override_of_another_type_is_a_clear_error():
    from zoo.registry import ConfigValueError
    with pytest.raises(ConfigValueError, match=r"user_vocab_size='abc' is a str, expected a int"):
        zoo.get_config("bert_mtl", "tiny", user_vocab_size="abc")
    with pytest.raises(ConfigValueError, match="history_titles=1 is a int, expected a bool"):
        zoo.get_config("bert_mtl", "tiny", history_titles=1)
    # An int may stand for a float; a list for a list.
    assert zoo.get_config("bert_mtl", "tiny", dropout=0)["dropout"] == 0
    assert zoo.get_config("dnn_mtl", "tiny", hidden_dims=[8])["hidden_dims"] == [8]
    with pytest.raises(ValueError, match="user_vocab_size must be >= 0"):
        zoo.get("bert_mtl", "tiny", user_vocab_size=-1)


def test_list_names_a_preset_whose_wheel_is_missing(monkeypatch, capsys):
    """`pip install -e .` without the MiniLM wheel: the listing says how to get it."""
    import argparse

    from zoo import __main__ as cli
    from zoo.models.ranker import text_encoders

    def missing():
        raise ValueError(f"text_encoder=minilm needs the package "
                         f"{text_encoders.MINILM_PACKAGE!r}: {text_encoders.INSTALL_HINT}")

    monkeypatch.setattr(text_encoders, "minilm_dir", missing)
    assert cli._list(argparse.Namespace(no_params=False)) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("bert_mtl") and "small_minilm" in l)
    assert "unavailable" in line and text_encoders.INSTALL_HINT in line
    assert any(l.startswith("bert_mtl") and " small " in l and "unavailable" not in l
               for l in out.splitlines())
