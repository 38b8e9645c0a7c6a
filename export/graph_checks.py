"""Checks that run inside an exported graph, so stock TF Serving enforces them as well."""

from __future__ import annotations


def finite(inputs: dict) -> dict:
    """The inputs, with an InvalidArgument naming the field when a number is NaN or
    infinite: one NaN price would otherwise flow silently into every score."""
    import tensorflow as tf

    return {k: tf.debugging.check_numerics(
        v, f"input {k} must hold finite numbers, not NaN or Inf") if v.dtype.is_floating else v
        for k, v in inputs.items()}
