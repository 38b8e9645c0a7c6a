"""The model registry: name -> (builder, presets, description).

In the style of TF Model Garden's `official/core/registry.py` and keras-hub's
`register_presets`: the built-in families are registered in ONE place
(`_register_builtin_families`, from each family package's `SPECS`); nothing is registered
as a side effect of importing a module. Presets are plain dicts of config. A family names
its builder and vocabulary fitter as "module:function" strings, loaded on first use, so a
family package never imports this module and listing never imports TensorFlow.

    import zoo
    zoo.list()                         # {"bert_mtl": ("tiny", "small", ...), ...}
    config = zoo.get_config("bert_mtl", "tiny", dropout=0.0)
    model = zoo.get("bert_mtl", "tiny", vocabulary=vocab, dropout=0.0)
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from typing import Any, Callable, Mapping

from zoo.lazy import resolve


class UnknownModelError(KeyError, ValueError):
    """An unknown model name; the message lists the registered ones."""

    def __str__(self):  # KeyError would repr() the message.
        return str(self.args[0]) if self.args else ""


class UnknownPresetError(UnknownModelError):
    """An unknown preset of a known model; the message lists its presets."""


class UnknownConfigKeyError(UnknownModelError):
    """An override that is not a config key of the preset; the message lists the keys."""


class ConfigValueError(TypeError, ValueError):
    """A config override of another type than the preset's value for that key."""


def _same_kind(preset_value, value) -> bool:
    """Whether `value` may replace `preset_value`: the same JSON kind (an int may stand for
    a float; a preset None takes anything)."""
    if preset_value is None:
        return True
    if isinstance(preset_value, bool) or isinstance(value, bool):
        return isinstance(preset_value, bool) and isinstance(value, bool)
    if isinstance(preset_value, float):
        return isinstance(value, (int, float))
    if isinstance(preset_value, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(preset_value))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model family.

    builder: `builder(config: dict, **build_args) -> keras.Model` (or its "module:function"
      name); `config` is a fresh copy of the preset dict with the overrides applied.
    presets: preset name -> plain dict of config (JSON-serialisable values).
    build_args: keyword arguments of `zoo.get` that go to the builder instead of the config
      (e.g. `vocabulary`).
    """

    name: str
    builder: Callable[..., Any]
    presets: Mapping[str, dict]
    description: str
    default_preset: str = "small"
    build_args: tuple[str, ...] = ()
    # `fit_vocabulary(features: dict[str, np.ndarray], config: dict) -> JSON-able dict`
    # (or its "module:function" name), for families that learn vocabularies from training
    # data; None = nothing to fit.
    fit_vocabulary: Callable[..., Any] | str | None = None
    # `grow_vocabulary(previous, new, evict_after_days=0) -> dict`: a warm-started run's
    # vocabulary (the ids of `previous` keep their order, less those evicted; `new`'s new
    # ids are appended); None = the family cannot be warm-started.
    grow_vocabulary: Callable[..., Any] | str | None = None
    # `table_rows(previous, vocabulary, weight_path, rows) -> np.ndarray | None`: for a warm
    # start, the parent's row of each row of an id table (-1: fresh), None for any other
    # weight (copied whole). Absent: tables are copied row for row as a prefix.
    table_rows: Callable[..., Any] | str | None = None
    # Module whose import registers the family's Keras classes (for safe-mode loading).
    keras_module: str | None = None
    # `wants_xla(config) -> bool`: whether XLA compilation speeds this model's training
    # step up (what `--jit_compile=auto` follows); None = never.
    wants_xla: Callable[[dict], bool] | None = None
    # Whether `trainers.pretrain` can pre-train this family's encoder.
    pretrainable: bool = False
    # How the family is trained: "keras" (the custom loop under tf.distribute) or
    # "lightgbm" (`trainers.core.gbdt_task`).
    trainer: str = "keras"
    # What the keras loop trains it for: "multitask" (click, purchase, price range, demand;
    # `trainers.core.multitask_task`) or "retrieval" (`trainers.core.retrieval_task`).
    task: str = "multitask"
    # Whether `export.saved_model` can export it for TF Serving.
    exportable: bool = True
    # Whether `--calibration_fraction` can fit a post-hoc calibration into the model
    # (`MultitaskRanker.with_calibration`).
    calibratable: bool = False

    def build(self, config: dict, **build_args):
        return resolve(self.builder)(config, **build_args)

    def fit(self, features: dict, config: dict):
        return None if self.fit_vocabulary is None else resolve(self.fit_vocabulary)(
            features, config)

    def grow(self, previous: dict, new: dict, **options) -> dict:
        if self.grow_vocabulary is None:
            raise ValueError(f"model {self.name!r} cannot be warm-started (its vocabulary "
                             "cannot grow); train it from scratch")
        return resolve(self.grow_vocabulary)(previous, new, **options)

    def rows(self, previous: dict, vocabulary: dict, weight_path: str, rows: int):
        return (None if self.table_rows is None else
                resolve(self.table_rows)(previous, vocabulary, weight_path, rows))

    def jit_compile(self, config: dict) -> bool:
        return bool(self.wants_xla(config)) if self.wants_xla else False


class Registry:
    """A name -> ModelSpec mapping with clear errors."""

    def __init__(self):
        self._specs: dict[str, ModelSpec] = {}

    def register(self, spec: ModelSpec) -> ModelSpec:
        if spec.name in self._specs:
            raise ValueError(f"model {spec.name!r} is already registered")
        if not spec.presets:
            raise ValueError(f"model {spec.name!r} has no presets")
        if spec.default_preset not in spec.presets:
            raise ValueError(f"model {spec.name!r}: default preset {spec.default_preset!r} "
                             f"is not one of {sorted(spec.presets)}")
        self._specs[spec.name] = spec
        return spec

    def register_family(self, specs) -> None:
        """Registers a family package's `SPECS` (ModelSpec keyword dicts)."""
        for spec in specs:
            self.register(ModelSpec(**spec))

    def names(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, name: str) -> ModelSpec:
        if name not in self._specs:
            raise UnknownModelError(
                f"unknown model {name!r}; known models: {', '.join(self.names()) or '(none)'}")
        return self._specs[name]

    def config(self, name: str, preset: str | None = None, **overrides) -> dict:
        spec = self.spec(name)
        preset = spec.default_preset if preset is None else preset
        if preset not in spec.presets:
            raise UnknownPresetError(
                f"unknown preset {preset!r} for model {name!r}; known presets: "
                f"{', '.join(spec.presets)}")
        config = copy.deepcopy(dict(spec.presets[preset]))
        unknown = sorted(set(overrides) - set(config))
        if unknown:
            raise UnknownConfigKeyError(
                f"model {name!r}: unknown config key(s) {unknown}; known keys: "
                f"{', '.join(sorted(config))}"
                + (f"; build arguments: {', '.join(spec.build_args)}" if spec.build_args else ""))
        wrong = {k: v for k, v in overrides.items() if not _same_kind(config[k], v)}
        if wrong:
            raise ConfigValueError(f"model {name!r}: " + "; ".join(
                f"{k}={v!r} is a {type(v).__name__}, expected a {type(config[k]).__name__} "
                f"like the preset's {config[k]!r}" for k, v in sorted(wrong.items())))
        config.update(copy.deepcopy(overrides))
        config["preset"] = preset
        return config

    def get(self, name: str, preset: str | None = None, **kwargs):
        spec = self.spec(name)
        build_args = {k: kwargs.pop(k) for k in list(kwargs) if k in spec.build_args}
        config = self.config(name, preset, **kwargs)
        return spec.build(config, **build_args)


_REGISTRY = Registry()
_LOCK = threading.Lock()
_REGISTERED = False


def _register_builtin_families(registry: Registry) -> None:
    """THE place where model families are registered, in listing order."""
    from zoo.models import bert_mtl, dnn_mtl, gbdt, popularity, two_tower

    for family in (bert_mtl, dnn_mtl, popularity, gbdt, two_tower):  # bert_mtl: also shared_bottom, ...
        registry.register_family(family.SPECS)


def registry() -> Registry:
    """The process-wide registry, with the built-in families registered on first use."""
    global _REGISTERED
    if not _REGISTERED:
        with _LOCK:
            if not _REGISTERED:
                _register_builtin_families(_REGISTRY)
                _REGISTERED = True
    return _REGISTRY


def register(spec: ModelSpec) -> ModelSpec:
    """Registers a model family from outside the zoo (e.g. an experiment)."""
    return registry().register(spec)


def spec(name: str) -> ModelSpec:
    """The registered family `name` (UnknownModelError lists the known ones)."""
    return registry().spec(name)


def get(name: str, preset: str | None = None, **overrides):
    """Builds model `name` from `preset` (default: the family's) with config `overrides`
    (and build arguments)."""
    return registry().get(name, preset, **overrides)


def get_config(name: str, preset: str | None = None, **overrides) -> dict:
    """The resolved config dict (`preset` dict + overrides, plus key "preset")."""
    return registry().config(name, preset, **overrides)


def fit_vocabulary(name: str, features: dict, config=None):
    """Model `name`'s vocabulary learned from TRAINING `features` (numpy arrays keyed like
    the raw features); `config` = a resolved config dict, a preset name, or None (the
    default preset). Returns a JSON-serialisable dict, or None when the family has none.
    """
    spec = registry().spec(name)
    if config is None or isinstance(config, str):
        config = get_config(name, config or spec.default_preset)
    return spec.fit(features, config)


def load_model(path: str):
    """`keras.models.load_model(path)` in safe mode, with every family's classes known."""
    import importlib

    import keras

    reg = registry()
    for name in reg.names():
        module = reg.spec(name).keras_module
        if module:
            importlib.import_module(module)
    return keras.models.load_model(path, safe_mode=True)


def list_models() -> dict[str, tuple[str, ...]]:
    """Registered model names -> their preset names."""
    reg = registry()
    return {name: tuple(reg.spec(name).presets) for name in reg.names()}


def describe(name: str) -> dict:
    """Description, default preset, build arguments and presets (config dicts) of `name`."""
    spec = registry().spec(name)
    return {
        "name": spec.name,
        "description": spec.description,
        "default_preset": spec.default_preset,
        "build_args": list(spec.build_args),
        "trainer": spec.trainer,
        "exportable": spec.exportable,
        "presets": copy.deepcopy({k: dict(v) for k, v in spec.presets.items()}),
    }


def count_preset_params(name: str, preset: str, **overrides) -> int:
    """Parameter count of a preset, without allocating or initialising the weights.

    Builds inside a `keras.StatelessScope` (variables get shapes, not values), so even a
    BERT-base-sized preset counts in seconds; the model built there is thrown away.
    """
    import keras

    with keras.StatelessScope():
        model = get(name, preset, **overrides)
        return count_params(model)


def count_params(model) -> int:
    return int(sum(int(_size(w.shape)) for w in model.weights))


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
