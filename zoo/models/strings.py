"""String columns -> counts and indices with pyarrow (no Python-level loop per value).

Every family that fits a vocabulary from training examples counts and looks up ids the same
way; keeping one copy means one tie-break rule and one bytes/str handling.
"""

from __future__ import annotations

import numpy as np


def arrow_strings(values):
    """A pyarrow string array of str / bytes / object values (tf.string comes as bytes)."""
    import pyarrow as pa

    arr = np.asarray(values).ravel()
    if arr.dtype.kind == "S" or (arr.dtype.kind == "O" and arr.size and
                                 any(isinstance(v, bytes) for v in arr[:1000])):
        return pa.array(arr.astype(object), type=pa.binary()).cast(pa.string())
    return pa.array(arr.astype(object) if arr.dtype.kind != "O" else arr, type=pa.string())


def most_frequent(*arrays, max_size: int) -> list[str]:
    """Distinct non-empty strings, most frequent first (ties: alphabetical), at most max_size."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = [a for a in arrays if np.asarray(a).size]
    if not arrays:
        return []
    counts = pc.value_counts(pa.chunked_array([arrow_strings(a) for a in arrays],
                                              type=pa.string()))
    values = counts.field("values").to_numpy(zero_copy_only=False).astype(object)
    freq = counts.field("counts").to_numpy()
    keep = values != ""
    values, freq = values[keep], freq[keep]
    if values.size == 0:
        return []
    order = np.lexsort((values.astype(str), -freq))
    return [str(v) for v in values[order][:max_size]]


def nonempty(values) -> np.ndarray:
    """values != "" (same shape), for str / bytes / object arrays."""
    import pyarrow.compute as pc

    return pc.not_equal(arrow_strings(values), "").to_numpy(zero_copy_only=False).reshape(
        np.shape(values))


def lookup(values, vocab: list[str]) -> np.ndarray:
    """Index of each value in `vocab` (same shape); -1 for "" and unknown values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    shape = np.shape(values)
    if not vocab or not np.size(values):
        return np.full(shape, -1, np.int64)
    idx = pc.index_in(arrow_strings(values), value_set=pa.array(vocab, pa.string()))
    return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64).reshape(shape)
