"""ecom-zoo: a Keras 3 / TensorFlow model zoo for e-commerce behaviour.

    import zoo
    zoo.list()                                     # registered names -> presets
    model = zoo.get("bert_mtl", "tiny", vocabulary=vocab)
    why = zoo.explain(model, raw_features, output="purchase")   # attributions per input

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



def explain(model, features: dict, output: str = "purchase", steps: int = 64) -> dict:
    """Integrated-gradients attributions of a bert_mtl model's `output` over each row's
    history events, query tokens, candidate and context features
    (`zoo.models.explain.explain`)."""
    from zoo.models.explain import explain as integrated_gradients

    return integrated_gradients(model, features, output=output, steps=steps)


# `zoo.list()` (shadows the builtin only inside this namespace).
list = list_models  # noqa: A001
