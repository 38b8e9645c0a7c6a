"""Integrated gradients: completeness, zero for padding, and clear refusals."""

import numpy as np
import pytest

import zoo
from zoo.models.explain import top_history_events
from helpers import tiny_model
from zoo.models.testing import random_raw_batch, split_labels


@pytest.fixture(scope="module")
def tiny():
    # A fixed initialisation: with some random ones a row's output sits within 1e-5 of the
    # baseline's, where completeness (a relative error) means nothing.
    import keras

    keras.utils.set_random_seed(0)  # smallest |output - baseline| 3e-4
    vocab, model = tiny_model()
    features, _ = split_labels(random_raw_batch(batch_size=12, history_length=50, seed=5))
    return vocab, model, features


def test_attributions_are_complete_and_padding_gets_none(tiny):
    _, model, features = tiny
    exp = zoo.explain(model, features, output="purchase", steps=64)
    diff = exp["output"] - exp["baseline_output"]
    assert (np.abs(diff) > 1e-5).all()
    # Completeness: the parts add up to the output's change from the baseline.
    parts = (exp["history"].sum(1) + exp["query"].sum(1) + exp["candidate"] + exp["special"]
             + sum(exp["context"].values()))
    np.testing.assert_allclose(parts, exp["total"], rtol=1e-6, atol=1e-9)
    assert (exp["completeness_error"] < 0.01).all(), exp["completeness_error"]
    # A padded history slot is the baseline itself: exactly no attribution.
    pre = model.preprocessor(features)
    pad = np.asarray(pre["hist_mask"])[:, :exp["history"].shape[1]] == 0
    assert pad.any() and (~pad).any()
    assert np.abs(exp["history"][pad]).max() == 0.0
    assert np.abs(exp["history"][~pad]).max() > 0.0
    # The drivers are real events, ranked by their attribution.
    for row, top in enumerate(top_history_events(exp, features, k=2)):
        vals = [t["attribution"] for t in top]
        assert vals == sorted(vals, reverse=True) and all(v > 0 for v in vals)
        assert all(not pad[row, t["position"]] for t in top)


def test_what_cannot_be_explained_is_refused(tiny):
    vocab, model, features = tiny
    with pytest.raises(ValueError, match="output must be one of"):
        zoo.explain(model, features, output="demand")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        zoo.explain(model, features, steps=0)
    dnn = zoo.get("dnn_mtl", "tiny", vocabulary=vocab)
    with pytest.raises(ValueError, match="need a bert_mtl model"):
        zoo.explain(dnn, features)
