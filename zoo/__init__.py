"""ecom-zoo: a Keras 3 / TensorFlow model zoo for e-commerce behaviour.

    import zoo
    zoo.list()                                     # registered names -> presets
    model = zoo.get("bert_mtl", "tiny", vocabulary=vocab)

Importing `zoo` does not import TensorFlow; building a model does.
"""

from zoo.registry import (  # noqa: F401
    ModelSpec,
    Registry,
    UnknownConfigKeyError,
    UnknownModelError,
    UnknownPresetError,
    count_params,
    count_preset_params,
    describe,
    spec,
    fit_vocabulary,
    get,
    get_config,
    list_models,
    load_model,
    register,
)

# `zoo.list()` (shadows the builtin only inside this namespace).
list = list_models  # noqa: A001
