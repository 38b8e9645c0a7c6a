"""The layout of an export base: version folders (the one rule every part of `export/`
reads them by) and where each version keeps its manifest.

TF Serving's layout is BASE/NAME/<V>/saved_model.pb with V a positive integer. A version
is *complete* once its saved_model.pb is there (an exporter renames a finished temp folder
into place; a copy can be seen half-done); the next version number must also skip
incomplete ones, so both views come from the same scan.
"""

from __future__ import annotations

import os
import re
from typing import Callable

VERSION_RE = re.compile(r"[1-9][0-9]*")
SAVED_MODEL_FILE = "saved_model.pb"
ASSETS_EXTRA = "assets.extra"
MANIFEST_FILE = "ecom_zoo_manifest.json"
MANIFEST_PATH = os.path.join(ASSETS_EXTRA, MANIFEST_FILE)  # inside a version folder


def version_dirs(model_base: str, complete: bool = True,
                 listdir: Callable = os.listdir, isdir: Callable = os.path.isdir,
                 exists: Callable = os.path.exists) -> dict[int, str]:
    """{version: folder} under model_base (BASE/NAME); complete=False also counts version
    folders without saved_model.pb yet. The file-system calls can be tf.io.gfile's."""
    if not isdir(model_base):
        return {}
    found = {}
    for entry in listdir(model_base):
        entry = entry.rstrip("/")
        path = os.path.join(model_base, entry)
        if VERSION_RE.fullmatch(entry) and (
                exists(os.path.join(path, SAVED_MODEL_FILE)) if complete else isdir(path)):
            found[int(entry)] = path
    return found


def versions(model_base: str, complete: bool = True) -> list[int]:
    return sorted(version_dirs(model_base, complete))
