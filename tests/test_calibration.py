"""Post-hoc calibration: the fitted maps recover planted miscalibration, the graph applies
exactly what the numpy map does, the model keeps it through save and load, and the flags
refuse what cannot be calibrated."""

import numpy as np
import pytest

from trainers.core import calibration, config as config_lib, metrics, train_lib
from trainers.core.multitask_task import MultitaskTask
from zoo.models.ranker.task import check_calibration
from helpers import tiny_model
from zoo.models.testing import random_raw_batch, split_labels


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_platt_recovers_a_planted_scale_and_bias():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 40_000)
    y = (rng.random(z.size) < _sigmoid(0.5 * z - 1.0)).astype(int)  # over-confident, too high
    raw = {"click": _sigmoid(z)}
    scale, bias = calibration.fit_platt(y, raw["click"])
    assert scale == pytest.approx(0.5, abs=0.05) and bias == pytest.approx(-1.0, abs=0.05)
    fixed = calibration.apply(raw, {"click": [scale, bias]})["click"]
    assert metrics.ece(y, raw["click"]) > 0.1
    assert metrics.ece(y, fixed) < 0.015
    assert metrics.predicted_to_observed(y, fixed) == pytest.approx(1.0, abs=0.02)
    assert metrics.auc(y, fixed) == pytest.approx(metrics.auc(y, raw["click"]), abs=1e-9)
    # Too few rows, or one class only: no map.
    assert calibration.fit_platt(y[:10], raw["click"][:10]) is None
    assert calibration.fit_platt(np.zeros(100), raw["click"][:100]) is None


def test_temperature_recovers_a_planted_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2.0, (30_000, 5))
    true = np.exp(logits / 2.5)
    true /= true.sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in true])
    raw = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t = calibration.fit_temperature(y, raw)
    assert t == pytest.approx(2.5, rel=0.05)
    fixed = calibration.apply({"price_range": raw}, {"price_range": t})["price_range"]
    np.testing.assert_allclose(fixed, true, atol=0.02)
    top = lambda p: (p.argmax(1) == y, p.max(1))  # noqa: E731
    assert metrics.ece(*top(fixed)) < 0.3 * metrics.ece(*top(raw))


@pytest.fixture(scope="module")
def tiny():
    _, model = tiny_model()
    features, _ = split_labels(random_raw_batch(batch_size=32, history_length=50, seed=3))
    return model, model.preprocessor(features)


def test_the_graph_applies_the_fitted_map(tiny, tmp_path):
    import keras

    model, x = tiny
    fitted = {"click": [0.7, -0.4], "purchase": [1.3, 0.2], "price_range": 1.8}
    raw = {k: np.asarray(v, np.float64) for k, v in model(x).items()}
    calibrated = model.with_calibration(fitted)
    got = {k: np.asarray(v, np.float64) for k, v in calibrated(x).items()}
    want = calibration.apply(raw, fitted)
    for task in ("click", "purchase", "price_range"):
        np.testing.assert_allclose(got[task], want[task], rtol=2e-4, atol=1e-6)
        assert not np.allclose(got[task], raw[task], atol=1e-3)  # the map did something
    np.testing.assert_allclose(got["demand"], raw["demand"], rtol=1e-6)
    # The calibration is part of the model: it survives save and load.
    path = str(tmp_path / "m.keras")
    calibrated.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.calibration == fitted
    np.testing.assert_allclose(np.asarray(loaded(x)["click"]), got["click"], rtol=1e-5)
    # Replacing the calibration with none gives the raw model back.
    np.testing.assert_allclose(np.asarray(loaded.with_calibration({})(x)["purchase"]),
                               raw["purchase"], rtol=1e-5)


def test_bad_calibrations_and_flags_are_refused():
    with pytest.raises(ValueError, match="unknown outputs"):
        check_calibration({"demand": 2.0})
    with pytest.raises(ValueError, match=r"\[scale, bias\]"):
        check_calibration({"click": [1.0]})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        check_calibration({"price_range": 0.0})
    with pytest.raises(ValueError, match="calibration_fraction must be in"):
        config_lib.validate(config_lib.TrainConfig(calibration_fraction=0.7))
    with pytest.raises(ValueError, match="unknown outputs"):
        config_lib.validate(config_lib.TrainConfig(calibrated_outputs="click,demand"))
    with pytest.raises(ValueError, match="multi-task rankers"):
        train_lib.check(MultitaskTask(), config_lib.TrainConfig(
            model="popularity", calibration_fraction=0.1))
