"""What a TensorProto declares and where it keeps its values, read without decoding it.

The server checks a request's tensors before any work (`serve._check_carried`) and the
batcher concatenates them (`batching.merge`); both need the same two facts."""

from __future__ import annotations

from tensorflow.core.framework import types_pb2

# The repeated field holding a dtype's values when a proto has no tensor_content.
_VALUE_FIELDS = {types_pb2.DT_STRING: "string_val", types_pb2.DT_FLOAT: "float_val",
                 types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT64: "int64_val",
                 types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
                 types_pb2.DT_BOOL: "bool_val", types_pb2.DT_HALF: "half_val",
                 types_pb2.DT_BFLOAT16: "half_val"}


def value_field(proto) -> str:
    """The repeated field of `proto`'s dtype (int_val for the narrow integer types)."""
    return _VALUE_FIELDS.get(proto.dtype, "int_val")


def elements(proto) -> int:
    """The number of values `proto`'s shape declares."""
    n = 1
    for d in proto.tensor_shape.dim:
        n *= d.size
    return n
