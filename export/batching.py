"""Server-side batching of concurrent requests, as TF Serving's `--enable_batching` does.

A model answering one row at a time spends most of its time on per-call overhead: a
batch of 32 rows costs little more than one row. Concurrent requests to the same version
and signature, with the same trailing input shapes, wait in a queue; a batch thread takes
up to `max_batch_size` rows from it as soon as it holds that many or its oldest request
has waited `batch_timeout_micros`, runs them as one call of the signature, and hands each
request its own rows back. `num_batch_threads` batches run at once; more than
`max_enqueued_batches` batches' worth of queued rows is refused (UNAVAILABLE) rather than
queued without bound.

If a batch fails (one request carries a NaN that the graph's checks refuse), each of its
requests is run again alone, so only the bad one fails: one client's bad input must not
fail its neighbours' requests.

Differences from TF Serving, on purpose: requests whose inputs differ in trailing shape
(e.g. history lengths) are queued apart instead of padded (`pad_variable_length_inputs`
is refused), and `allowed_batch_sizes` / large-batch splitting are not implemented (a
BatchingParameters file that sets them is an error naming the field).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time

from export import serving_config, tensor_protos

# TF Serving's defaults for the fields a BatchingParameters file leaves out.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10
UNSUPPORTED_FIELDS = ("allowed_batch_sizes", "pad_variable_length_inputs",
                      "max_execution_batch_size", "enable_large_batch_splitting",
                      "thread_pool_name")


class Rejected(Exception):
    """A request the batcher refuses before queueing it; `code` is a grpc.StatusCode name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclasses.dataclass(frozen=True)
class Parameters:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = os.cpu_count() or 1

    @classmethod
    def from_file(cls, path: str | None) -> "Parameters":
        """A --batching_parameters_file (text BatchingParameters); None: the defaults."""
        if not path:
            return cls()
        proto = serving_config.read_text_proto(path, serving_config.BatchingParameters)
        for name in UNSUPPORTED_FIELDS:
            value = getattr(proto, name)
            is_set = (len(value) if name == "allowed_batch_sizes"
                      else proto.HasField(name)
                      if proto.DESCRIPTOR.fields_by_name[name].message_type is not None
                      else value)
            if is_set:
                raise ValueError(f"{path}: {name} is not supported by export.serve "
                                 "(requests of different shapes are batched apart)")
        values = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                     "num_batch_threads"):
            if proto.HasField(name):
                values[name] = int(getattr(proto, name).value)
        params = cls(**values)
        for name, value in dataclasses.asdict(params).items():
            if value < (0 if name == "batch_timeout_micros" else 1):
                raise ValueError(f"{path}: {name} must be "
                                 f"{'>= 0' if name == 'batch_timeout_micros' else '> 0'}, "
                                 f"got {value}")
        return params


def merge(requests: list, rows: int) -> list:
    """[request][input] TensorProtos (same dtype and trailing shape per input) -> one
    TensorProto per input with every request's rows. Concatenated at the proto level when
    every request encodes it the same plain way (fixed-width `tensor_content`, whose
    lengths `serve._check_carried` has made exact, or one value per element in the
    repeated field); otherwise (strings in `tensor_content`, mixed encodings, a single
    value broadcast over the shape) decoded, concatenated and encoded again."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    out = []
    for i, first in enumerate(requests[0]):
        protos = [r[i] for r in requests]
        field = tensor_protos.value_field(first)
        merged = tensor_pb2.TensorProto(dtype=first.dtype)
        merged.tensor_shape.CopyFrom(first.tensor_shape)
        merged.tensor_shape.dim[0].size = rows
        if first.dtype != types_pb2.DT_STRING and all(p.tensor_content for p in protos):
            merged.tensor_content = b"".join(p.tensor_content for p in protos)
        elif all(not p.tensor_content and len(getattr(p, field)) == tensor_protos.elements(p)
                 for p in protos):
            values = getattr(merged, field)
            for p in protos:
                values.extend(getattr(p, field))
        else:
            import numpy as np
            import tensorflow as tf

            merged = tf.make_tensor_proto(np.concatenate([tf.make_ndarray(p) for p in protos]))
        out.append(merged)
    return out


@dataclasses.dataclass(eq=False)
class _Task:
    servable: object
    signature: str
    protos: list
    rows: int
    arrived: float = dataclasses.field(default_factory=time.monotonic)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None


class Batcher:
    """`submit` blocks until the request's batch has run; returns its serialized outputs
    (the servable's `_batch_runner` order)."""

    def __init__(self, params: Parameters):
        self.params = params
        self.timeout = params.batch_timeout_micros / 1e6
        self.cond = threading.Condition()
        self.queues: dict[tuple, list[_Task]] = {}
        self.queued_rows = 0
        self.stopping = False
        self.batches = 0  # batches run (for tests and benchmarks)
        self.threads = [threading.Thread(target=self._work, daemon=True,
                                         name=f"batch-{i}")
                        for i in range(params.num_batch_threads)]
        for t in self.threads:
            t.start()

    def submit(self, servable, signature: str, protos: list, rows: int, shapes: tuple):
        if rows > self.params.max_batch_size:
            raise Rejected("INVALID_ARGUMENT", f"Task size {rows} is larger than maximum "
                           f"batch size {self.params.max_batch_size}")
        task = _Task(servable, signature, protos, rows)
        key = (id(servable), signature, shapes)
        with self.cond:
            if self.stopping:
                raise Rejected("UNAVAILABLE", "the server is stopping")
            limit = self.params.max_enqueued_batches * self.params.max_batch_size
            if self.queued_rows + rows > limit:
                raise Rejected("UNAVAILABLE", "The batch scheduling queue to which this "
                               f"task was submitted is full ({self.queued_rows} rows queued)")
            self.queues.setdefault(key, []).append(task)
            self.queued_rows += rows
            self.cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def stop(self) -> None:
        """Refuses what is still queued (UNAVAILABLE) and ends the batch threads."""
        with self.cond:
            self.stopping = True
            for queue in self.queues.values():
                for task in queue:
                    task.error = Rejected("UNAVAILABLE", "the server is stopping")
                    task.done.set()
            self.queues.clear()
            self.queued_rows = 0
            self.cond.notify_all()

    # ---- batch threads ----
    def _take(self):
        """Under the lock: a ready batch (or None) and how long until one may be ready."""
        now, wait = time.monotonic(), None
        for key, queue in self.queues.items():
            rows = sum(t.rows for t in queue)
            age = now - queue[0].arrived
            if rows >= self.params.max_batch_size or age >= self.timeout:
                batch, total = [], 0
                while queue and total + queue[0].rows <= self.params.max_batch_size:
                    task = queue.pop(0)
                    batch.append(task)
                    total += task.rows
                if not queue:
                    del self.queues[key]
                self.queued_rows -= total
                return batch, None
            left = self.timeout - age
            wait = left if wait is None else min(wait, left)
        return None, wait

    def _work(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self.stopping:
                        return
                    batch, wait = self._take()
                    if batch:
                        break
                    self.cond.wait(wait)
            self._run(batch)

    def _run(self, batch: list) -> None:
        import tensorflow as tf

        def call(tasks):
            run = tasks[0].servable._batch_runner(tasks[0].signature)[0]
            merged = merge([t.protos for t in tasks], sum(t.rows for t in tasks))
            out = run(tf.constant([m.SerializeToString() for m in merged]),
                      tf.constant([t.rows for t in tasks], tf.int32)).numpy()
            for task, answer in zip(tasks, out):
                task.result = answer

        try:
            try:
                call(batch)
                self.batches += 1
            except Exception as e:
                if len(batch) == 1:
                    batch[0].error = e
                else:  # find the request(s) the graph refused; the others are answered
                    for task in batch:
                        try:
                            call([task])
                        except Exception as e1:
                            task.error = e1
                        task.done.set()  # answered now, not after the whole re-run
        finally:
            for task in batch:
                task.done.set()
