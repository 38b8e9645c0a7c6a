"""The registry of exported models: what is in an export base and which version each label serves.

TF Serving already reads its models from a directory tree (`B/NAME/<V>/`) and its routing from a
model config file (`B/models.config`), so the registry is nothing more than those two plus the
manifest each export writes next to its SavedModel (`assets.extra/ecom_zoo_manifest.json`). Keeping
no separate database means there is nothing to get out of sync: `list` reads what TF Serving would
load, and `promote` edits the very file TF Serving polls (`--model_config_file`), atomically.

    python -m export.registry --export_base B list
    python -m export.registry --export_base B show NAME [VERSION]
    python -m export.registry --export_base B promote NAME VERSION --label stable
    python -m export.registry --export_base B lookup NAME --label stable

Note: TF Serving by default accepts a label only for a version that is already loaded. Promoting a
version that is not yet served adds it to the model's `specific` version policy and labels it in
one config write, so run the server with `--allow_version_labels_for_unavailable_models`, or
promote a not-yet-served version under a temporary label first and move the real label once it
is loaded.
"""

import contextlib
import json
import math
import os
import posixpath
import re
import sys
import tempfile

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from export import layout
from trainers.core import metrics as metrics_lib

CONFIG_FILE = "models.config"
MANIFEST_PATH = layout.MANIFEST_PATH
SAVED_MODEL_FILE = layout.SAVED_MODEL_FILE
# Eval metrics shown by `list`, in this order (others stay in the manifest; see `show`).
MAIN_METRICS = metrics_lib.MAIN_METRICS

_VERSION_RE = layout.VERSION_RE
_LABEL_RE = re.compile(r"[a-z0-9_-]+")
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class RegistryError(ValueError):
    """A registry request that cannot be met: missing model/version/label or a bad file."""


# ---------------------------------------------------------------------------------------------
# Reading the export base.


def _check_base(base: str) -> str:
    if not os.path.isdir(base):
        raise RegistryError(f"export base {base!r} is not a directory")
    return base


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise RegistryError(f"invalid model name {name!r}: expected letters, digits, '_', '-', "
                            "'.' (no path separators, not starting with '.' or '-')")
    return name


def model_names(base: str) -> list[str]:
    """Model directories under `base` (hidden entries such as temp files are skipped), sorted."""
    _check_base(base)
    return sorted(entry for entry in os.listdir(base)
                  if not entry.startswith(".") and os.path.isdir(os.path.join(base, entry)))


def versions(base: str, name: str) -> list[int]:
    """Complete versions of `name`, ascending.

    A version is a directory `base/name/<V>` with V a positive integer that holds
    `saved_model.pb`. Anything else (in-progress `.tmp-*` exports, half-written version
    directories without `saved_model.pb`) is not a version and is ignored.
    """
    check_name(name)
    model_dir = os.path.join(_check_base(base), name)
    if not os.path.isdir(model_dir):
        raise RegistryError(f"no model {name!r}: {model_dir} is not a directory "
                            f"(models in {base}: {_or_none(model_names(base))})")
    return layout.versions(model_dir)


def version_dir(base: str, name: str, version: int) -> str:
    """The directory of one existing version; RegistryError listing the versions if absent."""
    version = _as_version(version)
    existing = versions(base, name)
    if version not in existing:
        raise RegistryError(f"model {name!r} has no version {version} under "
                            f"{os.path.join(base, name)} (existing versions: "
                            f"{_or_none(existing)})")
    return os.path.join(base, name, str(version))


def check_loadable(vdir: str) -> None:
    """RegistryError unless `vdir` holds a SavedModel that TF Serving could load: a
    saved_model.pb that parses, with a signature, and the variables' index beside it (what a
    copy cut short or a corrupted file lacks). Cheap: the graph is parsed, not loaded."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    pb = os.path.join(vdir, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    try:
        with open(pb, "rb") as f:
            proto.ParseFromString(f.read())
    except (OSError, DecodeError, RuntimeWarning) as e:
        raise RegistryError(f"{pb}: not a readable SavedModel ({type(e).__name__}: {e}); "
                            "re-export this version") from None
    if not any(meta.signature_def for meta in proto.meta_graphs):
        raise RegistryError(f"{pb}: no signature in the SavedModel; re-export this version")
    index = os.path.join(vdir, "variables", "variables.index")
    if not os.path.exists(index):
        raise RegistryError(f"{vdir}: variables/variables.index is missing (a copy cut "
                            "short?); re-export or copy the version again")


def read_manifest(base: str, name: str, version: int | None = None) -> dict:
    """The manifest of `name` at `version` (the latest version if None)."""
    if version is None:
        existing = versions(base, name)
        if not existing:
            raise RegistryError(f"model {name!r} has no complete version under "
                                f"{os.path.join(base, name)} (expected <V>/{SAVED_MODEL_FILE})")
        version = existing[-1]
    path = os.path.join(version_dir(base, name, version), MANIFEST_PATH)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise RegistryError(f"model {name!r} version {version} has no manifest: {path} "
                            "is missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RegistryError(f"cannot read manifest {path}: {e}") from e
    if not isinstance(manifest, dict):
        raise RegistryError(f"manifest {path} holds a {type(manifest).__name__}, expected a "
                            "JSON object")
    return manifest


def signature_summary(signatures: dict | None) -> str:
    """E.g. "serving_default(16 in → 4 out), predict_examples(1 in → 4 out)"."""
    if not isinstance(signatures, dict) or not signatures:
        return "-"
    parts = []
    for sig_name, sig in signatures.items():
        sig = sig if isinstance(sig, dict) else {}
        parts.append(f"{sig_name}({len(sig.get('inputs') or {})} in → "
                     f"{len(sig.get('outputs') or {})} out)")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# models.config.


def config_path(base: str) -> str:
    """Path of TF Serving's model config file in `base`."""
    return os.path.join(base, CONFIG_FILE)


def read_config(base: str) -> model_server_config_pb2.ModelServerConfig:
    """`base/models.config` parsed; an empty ModelServerConfig if the file is absent."""
    path = config_path(_check_base(base))
    config = model_server_config_pb2.ModelServerConfig()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return config
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryError(f"cannot read {path}: {e}") from e
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise RegistryError(f"{path} is not a ModelServerConfig in text format: {e}") from e
    if config.WhichOneof("config") == "custom_model_config":
        raise RegistryError(f"{path} holds a custom_model_config; expected model_config_list")
    return config


def _find_entry(config, name: str, path: str):
    matches = [c for c in config.model_config_list.config if c.name == name]
    if len(matches) > 1:
        raise RegistryError(f"{path} lists model {name!r} {len(matches)} times; expected once")
    return matches[0] if matches else None


def labels(base: str, name: str) -> dict[str, int]:
    """Labels of `name` in models.config, label -> version ({} if none)."""
    entry = _find_entry(read_config(base), name, config_path(base))
    return dict(sorted(entry.version_labels.items())) if entry is not None else {}


def check_label(label: str) -> str:
    if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
        raise RegistryError(f"invalid label {label!r}: expected lowercase letters, digits, "
                            "'_' or '-' (e.g. stable, canary)")
    return label


def _as_version(version) -> int:
    if isinstance(version, bool):
        version = str(version)  # reject True/False below
    if isinstance(version, int) and version > 0:
        return version
    if isinstance(version, str) and _VERSION_RE.fullmatch(version.strip()):
        return int(version)
    raise RegistryError(f"invalid version {version!r}: expected a positive integer")


@contextlib.contextmanager
def _config_lock(base: str):
    """Serialises read-modify-write of models.config between concurrent `promote` calls."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the write itself is still atomic
        yield
        return
    with open(os.path.join(base, f".{CONFIG_FILE}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644  # TF Serving may run as another user: readable by all, like a new file
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def promote(base: str, name: str, version: int, label: str,
            serving_base_path: str | None = None) -> str:
    """Point `label` of `name` at `version` in models.config; returns the config path.

    Creates the model's entry if missing, moves the label if it pointed elsewhere and sets the
    version policy to `specific` = every labelled version (TF Serving serves a label only if its
    version is loaded). Other models and fields are left as they are. Written atomically.
    `serving_base_path`: where the server sees the export base (e.g. /models in a
    container that mounts it there); the entry's base_path becomes SERVING_BASE_PATH/NAME.
    Without it, the absolute path on this machine.
    """
    if serving_base_path is not None and not serving_base_path.startswith("/"):
        raise RegistryError(f"--serving_base_path must be an absolute path as the server "
                            f"sees it (e.g. /models), got {serving_base_path!r}")
    check_label(label)
    version = _as_version(version)
    check_loadable(version_dir(base, name, version))  # it must exist and be whole
    path = config_path(base)
    with _config_lock(base):
        config = read_config(base)
        entry = _find_entry(config, name, path)
        if entry is None:
            entry = config.model_config_list.config.add()
            entry.name = name
            entry.base_path = os.path.abspath(os.path.join(base, name))
            entry.model_platform = "tensorflow"
        if serving_base_path is not None:
            entry.base_path = posixpath.join(serving_base_path, name)
        entry.version_labels[label] = version
        specific = entry.model_version_policy.specific
        del specific.versions[:]
        specific.versions.extend(sorted(set(entry.version_labels.values())))
        _write_atomically(path, text_format.MessageToString(config))
    return path


def lookup(base: str, name: str, label: str) -> int:
    """The version `label` of `name` points at in models.config."""
    path = config_path(base)
    config = read_config(base)
    entry = _find_entry(config, name, path)
    if entry is None:
        known = sorted(c.name for c in config.model_config_list.config)
        where = path if os.path.exists(path) else f"{path} (file absent)"
        raise RegistryError(f"model {name!r} is not in {where} (models there: "
                            f"{_or_none(known)})")
    if label not in entry.version_labels:
        raise RegistryError(f"model {name!r} has no label {label!r} in {path} (labels: "
                            f"{_or_none(_label_list(entry.version_labels))})")
    return entry.version_labels[label]


def _label_list(version_labels) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(version_labels.items())]


def _or_none(items) -> str:
    items = list(items)
    return ", ".join(str(i) for i in items) if items else "none"


# ---------------------------------------------------------------------------------------------
# Listing.


def list_models(base: str) -> list[dict]:
    """One row per model/version: every model dir under `base` and every model in models.config.

    Row keys: name, version, status, path, export_time, model_dir, model, preset, step,
    metrics, labels (sorted label names), signatures (summary string). status is "ok";
    "missing" for a version that models.config labels but that is not on disk; "no manifest"
    / "bad manifest" when the manifest cannot be read; "no versions" (with version None) for a
    model with no complete version and no label.
    """
    config = read_config(base)
    labelled: dict[str, dict[int, list[str]]] = {}
    for entry in config.model_config_list.config:
        by_version = labelled.setdefault(entry.name, {})
        for label, v in sorted(entry.version_labels.items()):
            by_version.setdefault(v, []).append(label)
    rows = []
    for name in sorted(set(model_names(base)) | set(labelled)):
        on_disk = versions(base, name) if os.path.isdir(os.path.join(base, name)) else []
        by_version = labelled.get(name, {})
        all_versions = sorted(set(on_disk) | set(by_version))
        if not all_versions:
            rows.append(_row(name, None, "no versions", os.path.join(base, name), {}, []))
            continue
        for v in all_versions:
            path = os.path.join(base, name, str(v))
            if v not in on_disk:
                rows.append(_row(name, v, "missing", path, {}, by_version.get(v, [])))
                continue
            try:
                manifest, status = read_manifest(base, name, v), "ok"
            except RegistryError:
                manifest = {}
                status = ("bad manifest" if os.path.exists(os.path.join(path, MANIFEST_PATH))
                          else "no manifest")
            rows.append(_row(name, v, status, path, manifest, by_version.get(v, [])))
    return rows


def _row(name, version, status, path, manifest, row_labels) -> dict:
    metrics = manifest.get("metrics")
    return {
        "name": name,
        "version": version,
        "status": status,
        "path": path,
        "export_time": manifest.get("export_time"),
        "model_dir": manifest.get("model_dir"),
        "model": manifest.get("model"),
        "preset": manifest.get("preset"),
        "step": manifest.get("step"),
        "metrics": dict(metrics) if isinstance(metrics, dict) else {},
        "labels": list(row_labels),
        "signatures": signature_summary(manifest.get("signatures")),
    }


def _fmt_metric(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"


def pretty_json(obj, indent: int = 0, width: int = 96) -> str:
    """JSON with two-space indents, but any object or list that fits in `width` on one line."""
    flat = json.dumps(obj, ensure_ascii=False)
    if not isinstance(obj, (dict, list)) or not obj or indent + len(flat) <= width:
        return flat
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: "
                 f"{pretty_json(v, indent + 2, width)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [inner + pretty_json(v, indent + 2, width) for v in obj]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def format_table(rows: list[dict]) -> str:
    """`list_models` rows as a plain-text table."""
    header = ["MODEL", "VERSION", "EXPORTED (UTC)", "SOURCE", "STEP", *MAIN_METRICS,
              "LABELS", "SIGNATURES"]
    show_status = any(r["status"] != "ok" for r in rows)
    if show_status:
        header.append("STATUS")
    lines = [header]
    for r in rows:
        line = [r["name"], "-" if r["version"] is None else str(r["version"]),
                r["export_time"] or "-", r["model_dir"] or "-",
                "-" if r["step"] is None else str(r["step"]),
                *(_fmt_metric(r["metrics"].get(m)) for m in MAIN_METRICS),
                ",".join(r["labels"]) or "-", r["signatures"]]
        if show_status:
            line.append(r["status"])
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in lines)


# ---------------------------------------------------------------------------------------------
# CLI.

_USAGE = """commands:
  list                         models, versions, metrics, labels, signatures
  show NAME [VERSION]          a version's manifest (latest if VERSION absent) and its labels
  promote NAME VERSION --label L   point label L at VERSION in models.config
  lookup NAME --label L        print the version label L points at"""


def define_flags():
    """Defines the CLI's flags (only when run as a program, so importing defines nothing)."""
    from absl import flags
    flags.DEFINE_string("export_base", None, "Export base directory B (B/NAME/<V>/ versions, "
                        "B/models.config).")
    flags.DEFINE_string("label", None, "Version label for promote and lookup, e.g. stable.")
    flags.DEFINE_string("serving_base_path", None, "promote: the export base as the server "
                        "sees it (a container's mount, e.g. /models); default: this "
                        "machine's absolute path.")
    flags.mark_flag_as_required("export_base")


def run(argv: list[str], base: str, label: str | None,
        serving_base_path: str | None = None) -> int:
    """Runs one command (argv without the program name); returns the exit code."""
    if not argv:
        raise RegistryError(f"missing command\n{_USAGE}")
    command, args = argv[0], argv[1:]

    def expect(n_min, n_max, usage):
        if not n_min <= len(args) <= n_max:
            raise RegistryError(f"usage: {usage} (got {len(args)} argument(s): "
                                f"{' '.join(args) or 'none'})")

    def need_label():
        if not label:
            raise RegistryError(f"{command} needs --label (e.g. --label stable)")
        return label

    if command == "list":
        expect(0, 0, "list")
        rows = list_models(base)
        print(format_table(rows) if rows else f"no models in {base}")
    elif command == "show":
        expect(1, 2, "show NAME [VERSION]")
        name = args[0]
        version = _as_version(args[1]) if len(args) > 1 else None
        manifest = read_manifest(base, name, version)
        version = version if version is not None else versions(base, name)[-1]
        own = [k for k, v in labels(base, name).items() if v == version]
        print(f"# {os.path.join(base, name, str(version), MANIFEST_PATH)}")
        print(f"# labels: {', '.join(own) or 'none'}")
        print(pretty_json(manifest))
    elif command == "promote":
        expect(2, 2, "promote NAME VERSION --label LABEL")
        name, version = args[0], _as_version(args[1])
        path = promote(base, name, version, need_label(), serving_base_path)
        print(f"{name}: {label} -> version {version} ({path}; served versions: "
              f"{_or_none(sorted(set(labels(base, name).values())))})")
    elif command == "lookup":
        expect(1, 1, "lookup NAME --label LABEL")
        print(lookup(base, args[0], need_label()))
    else:
        raise RegistryError(f"unknown command {command!r}\n{_USAGE}")
    return 0


def main(argv):
    from absl import flags
    try:
        return run(argv[1:], flags.FLAGS.export_base, flags.FLAGS.label,
                   flags.FLAGS.serving_base_path)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from absl import app
    define_flags()
    app.run(main)
