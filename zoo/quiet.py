"""A quiet start for the entry points.

TensorFlow prints a dozen lines before anything useful: absl's "before InitializeLog"
warning, oneDNN and CUDA probing (twice: TensorFlow and TF Text each load), and the
libraries' INFO logs ("Sharding callback duration", TFDS' "Using custom data
configuration"). `TF_CPP_MIN_LOG_LEVEL` does not reach the lines printed before absl's C++
logging is initialised, so `start()` imports TensorFlow with file descriptor 2 pointed at a
temporary file (shown again if the import fails; whatever the import printed is dropped
when it succeeds) and filters the libraries' INFO records (and TFDS' warnings) out of
Python logging. The entry points' own logs and the libraries' Python warnings and errors
after the import stay. `ECOM_ZOO_TF_LOGS=1` keeps everything.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

ENV = "ECOM_ZOO_TF_LOGS"


# This project's packages: their records always pass, installed or not.
OWN_PACKAGES = ("zoo", "trainers", "export", "benchmarks")


class _LibraryChatter(logging.Filter):
    """Drops INFO (and TFDS' WARNING) records logged from other installed packages."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = (record.pathname or "").replace("\\", "/")
        if ("-packages/" not in path or record.levelno >= logging.ERROR
                or any(f"-packages/{p}/" in path for p in OWN_PACKAGES)):
            return True
        return record.levelno >= logging.WARNING and "/tensorflow_datasets/" not in path


_FILTER = _LibraryChatter()


def start() -> None:
    """Call before anything imports TensorFlow (an entry point's first lines)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get(ENV) == "1":
        return
    _import_tensorflow_quietly()
    from absl import logging as absl_logging

    for target in (absl_logging.get_absl_handler(), logging.getLogger("tensorflow")):
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)


def _import_tensorflow_quietly() -> None:
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    captured = tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 2)
    ok = False
    try:
        import tensorflow as tf

        try:
            import tensorflow_text  # noqa: F401  (loads its own copy of the C++ logging)
        except ImportError:
            pass
        tf.config.list_physical_devices()  # the CUDA probe prints here
        ok = True
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if not ok:
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
        captured.close()
