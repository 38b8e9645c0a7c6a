"""Loading on first use: what lets `import zoo` and `python -m zoo list` run without
importing TensorFlow, while each family still names its classes and builder in one place.

Family packages and the registry both use these two helpers; this module imports nothing
of the zoo, so neither depends on the other through it.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def resolve(target: Any) -> Any:
    """"package.module:attribute" -> that attribute (imported now); anything else as is."""
    if not isinstance(target, str):
        return target
    module, sep, attribute = target.partition(":")
    if not sep or not attribute:
        raise ValueError(f"{target!r}: expected 'package.module:attribute'")
    return getattr(importlib.import_module(module), attribute)


def module_getattr(module_name: str, lazy: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` serving `lazy` (attribute -> "module:attribute" or
    "module", the attribute then taken under its own name) on first access."""

    def __getattr__(name):
        if name in lazy:
            target = lazy[name]
            return resolve(target if ":" in target else f"{target}:{name}")
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__
