"""Checks that run inside an exported graph, so stock TF Serving enforces them as well."""

from __future__ import annotations


def finite(inputs: dict) -> dict:
    """The inputs, with an InvalidArgument naming the field when a number is NaN or
    infinite: one NaN price would otherwise flow silently into every score."""
    import tensorflow as tf

    # tf.debugging.Assert: a plain message naming the input (check_numerics adds the
    # tensor's name and a summary).
    checks = [tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(v)),
                                  [f"input {k} must hold finite numbers, not NaN or Inf"])
              for k, v in inputs.items() if v.dtype.is_floating]
    with tf.control_dependencies(checks):  # nothing downstream runs before every check
        return {k: tf.identity(v) for k, v in inputs.items()}
