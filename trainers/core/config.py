"""The training config: every default written once, every field a flag.

`TrainConfig` is the one place where a run's settings and their defaults live. The
command-line flags are generated from its fields (and from `LabelConfig`'s), so a new
field is settable from the command line the moment it exists and cannot drift from its
flag; a task changes a default by naming it (`Task.flag_defaults`), not by copying the
field. Each run writes its settings as an absl flagfile into its model_dir
(`write_flagfile`), which `--flagfile` reads back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import typing

from absl import flags

from zoo.data import contract, labels as labels_lib

DEFAULT_TASK_WEIGHTS = "click=1,purchase=1,price_range=0.5,demand=0.5"
FLAGFILE = "flags.txt"
# Model config overrides, a dict in the config, are one repeated flag of key=value items.
OVERRIDES_FLAG = "model_override"


def _field(default, help: str, choices: tuple | None = None):
    metadata = {"help": help, **({"choices": choices} if choices else {})}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    # Data.
    data_dir: str | None = _field(None, "Contract folder (events + items, CSV or Parquet). "
                                  "Absent: the simulator's default data set.")
    tfds_dir: str | None = _field(None, "Where prepared examples go (default: "
                                  "$ECOM_ZOO_CACHE/tfds, ECOM_ZOO_CACHE defaults to "
                                  "~/.cache/ecom_zoo).")
    label_config: labels_lib.LabelConfig = dataclasses.field(
        default_factory=labels_lib.LabelConfig,
        metadata={"help": "the labels' settings (their own flags)"})
    # Model.
    model: str = _field("bert_mtl", "Registered model name (python -m zoo list).")
    preset: str = _field("small", "Preset of the model.")
    model_overrides: dict = _field({}, "key=value overriding a preset's config, repeatable "
                                   "(python -m zoo describe NAME lists the keys; e.g. "
                                   "text_encoder=minilm).")
    model_dir: str | None = _field(None, "Checkpoints, summaries, metrics, the saved model "
                                   "(default runs/<model>_<preset>). Re-running resumes "
                                   "from it.")
    # Optimisation.
    epochs: float = _field(1.0, "Passes over the training split (ignored if --steps).")
    steps: int = _field(0, "Total training steps (> 0 overrides --epochs).")
    batch_size: int = _field(256, "Global batch size (split across replicas).")
    learning_rate: float = _field(2e-3, "Peak learning rate (warmup, then cosine).")
    warmup_steps: int = _field(100, "Linear warmup steps.")
    weight_decay: float = _field(0.01, "AdamW's decoupled weight decay.")
    ema_momentum: float = _field(
        0.0, "> 0: the run evaluates and saves an exponential moving average of the weights "
        "(Keras' optimizer EMA, this momentum per step); 0: the last weights.")
    lazy_table_updates: str = _field(
        "auto", "true: AdamW updates an embedding table at the rows the step looked up only "
        "(LazyAdam; its cost does not grow with the vocabulary). false: Keras' AdamW, every "
        "row every step. auto: true when a table has more than 100,000 rows.",
        ("auto", "true", "false"))
    task_weights: str = _field(DEFAULT_TASK_WEIGHTS, "Loss weight per task.")
    # Distribution.
    strategy: str = _field(
        "one_device", "tf.distribute strategy (multi_worker_mirrored and parameter_server "
        "read the cluster from TF_CONFIG; python -m trainers.launch starts a local one).",
        ("one_device", "mirrored", "multi_worker_mirrored", "parameter_server"))
    ps_min_shard_bytes: int = _field(1 << 20, "parameter_server: a variable of at least this "
                                     "many bytes (the id embedding tables) is sharded across "
                                     "the parameter servers.")
    cpu_devices: int = _field(1, "Split the CPU into this many logical devices (lets "
                              "--strategy=mirrored run on a CPU-only machine).")
    jit_compile: str = _field("auto", "XLA-compile the forward/backward pass. auto: as the "
                              "model family declares (bert_mtl: on from hidden width 128; "
                              "see BUILD_NOTES.md).", ("auto", "true", "false"))
    seed: int = _field(42, "Seed of weights, dropout and data order.")
    # Loop.
    steps_per_loop: int = _field(50, "Steps per tf.function call (progress updates).")
    checkpoint_every: int = _field(500, "Checkpoint every N steps (and at the end).")
    eval_every: int = _field(0, "Also evaluate every N steps (0: at the end only).")
    eval_batch_size: int = _field(1024, "Batch size of evaluation.")
    vocabulary_examples: int = _field(200_000, "Training examples the vocabulary is fitted "
                                      "on (the first ones of the split).")
    cache_dataset: bool = _field(True, "Cache the parsed training examples in memory.")
    verbose: bool = _field(True, "Print the data summary, progress bar and metrics table.")
    # Export.
    export_base: str | None = _field(None, "Export the trained model for TF Serving to "
                                     "EXPORT_BASE/<export_name>/<next version> (python -m "
                                     "export.saved_model).")
    export_name: str | None = _field(None, "Model name of the export (default: the "
                                     "model_dir's folder name).")
    # Fine-tuning.
    init_checkpoint: str | None = _field(None, "A trainers.pretrain model_dir: the encoder "
                                         "starts from its weights (and vocabulary); the "
                                         "heads start fresh.")
    warm_start_from: str | None = _field(
        None, "A finished trainers.multitask model_dir of the same model and preset (e.g. "
        "yesterday's): this run starts from its weights; the vocabularies grow (new ids get "
        "fresh rows, known ids keep theirs), the optimizer starts fresh, and the run spec "
        "records the parent.")
    warm_start_optimizer: bool = _field(
        False, "With --warm_start_from: carry the parent's optimizer state (AdamW's moments "
        "and moving averages from its latest checkpoint, an id table's rows by id; Adam's "
        "bias correction continues from the parent's steps) instead of starting it fresh.")
    evict_after_days: float = _field(
        0.0, "With --warm_start_from: ids (items, users, brands, categories) that no training "
        "example of this run or of its parents held in this many days before the newest "
        "one are dropped from the vocabulary (they go to the OOV buckets and their table rows "
        "are freed, so the tables do not grow with every id ever seen); 0: never.")
    lora_rank: int = _field(0, "> 0: LoRA adapters of this rank on the encoder's attention; "
                            "the rest of the encoder is frozen.")
    freeze_encoder: bool = _field(False, "Train the heads only.")
    lora_train_embeddings: bool = _field(False, "With --lora_rank: the encoder's input "
                                         "embeddings (id, user and feature tables) train "
                                         "beside the adapters.")
    labels_fraction: float = _field(1.0, "Train on this fraction of the labelled impressions "
                                    "(chosen by event_id hash); evaluation uses all.")
    train_start: str | None = _field(
        None, "YYYY-MM-DD (UTC): impressions of the training split before this day are not "
        "trained on; their events still form the later impressions' histories and features "
        "(a look-back, as the daily loop gives each window).")
    calibration_fraction: float = _field(
        0.0, "> 0: hold this latest share of the training impressions (by time) out of "
        "training and fit a post-hoc calibration of the click, purchase and price-range "
        "outputs on it (Platt scaling, a temperature), stored in the model and its exports.")
    calibrated_outputs: str = _field(
        "click,purchase", "With --calibration_fraction: the outputs to calibrate (of "
        "click, purchase, price_range). price_range is off by default: its training labels "
        "are thinned per purchase (--price_labels_per_purchase) and a temperature fitted on "
        "them made the eval split worse (BUILD_NOTES.md).")


LABEL_HELP = {
    "num_price_ranges": "K: price ranges of the price_range label (training items' price "
                        "quantiles).",
    "price_horizon_days": "H: window for the next purchase's price range.",
    "demand_horizon_days": "D: window for the item demand label.",
    "eval_fraction": "Last fraction of days that form the eval split.",
    "history_length": "L: behaviour events kept per example.",
    "price_labels_per_purchase": "Training impressions, drawn at random, that keep the "
                                 "price-range label of one next purchase (0: all).",
}


def model_config_of(config: TrainConfig) -> dict:
    """The resolved zoo config of the run (preset + overrides + the label's K, for the
    families with a price-range head)."""
    import zoo

    label_keys = {"num_price_ranges": config.label_config.num_price_ranges}
    preset = zoo.get_config(config.model, config.preset)
    return zoo.get_config(config.model, config.preset,
                          **{k: v for k, v in label_keys.items() if k in preset},
                          **config.model_overrides)


def parse_task_weights(text: str, tasks=None) -> dict:
    """'click=1,purchase=1,price_range=0.5,demand=0.5' -> dict; names checked against
    `tasks` (default: the multi-task outputs)."""
    if tasks is None:
        from zoo.models.features import TASKS as tasks
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--task_weights: {part!r} is not task=weight")
        if name not in tasks:
            raise ValueError(f"--task_weights: unknown task {name!r}; tasks: {list(tasks)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--task_weights: weight of {name!r} is {value!r}, expected a "
                             "number") from None
        if weights[name] < 0 or not math.isfinite(weights[name]):
            raise ValueError(f"--task_weights: weight of {name!r} must be >= 0")
    return weights


def parse_overrides(items) -> dict:
    """['key=value', ...] -> {key: JSON value, or the string when it is not JSON}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--{OVERRIDES_FLAG}: {item!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# --- flags generated from the dataclasses -------------------------------------------------
def _kind(cls, field: dataclasses.Field) -> str:
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return {str: "string", int: "integer", float: "float", bool: "bool"}[args[0]]


def _define(cls, field, default, flag_values, help_text=None) -> None:
    help_text = help_text or field.metadata.get("help", field.name)
    choices = field.metadata.get("choices")
    if choices:
        flags.DEFINE_enum(field.name, default, list(choices), help_text,
                          flag_values=flag_values)
        return
    define = getattr(flags, f"DEFINE_{_kind(cls, field)}")
    define(field.name, default, help_text, flag_values=flag_values)


def define_flags(defaults: dict | None = None, flag_values=flags.FLAGS) -> None:
    """One flag per `TrainConfig` field (the label config's fields flattened, the model
    overrides as repeated --model_override), with the dataclass defaults unless `defaults`
    names another."""
    defaults = dict(defaults or {})
    base = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        if field.name == "label_config":
            for label_field in dataclasses.fields(labels_lib.LabelConfig):
                _define(labels_lib.LabelConfig, label_field,
                        defaults.get(label_field.name,
                                     getattr(base.label_config, label_field.name)),
                        flag_values, LABEL_HELP[label_field.name])
        elif field.name == "model_overrides":
            flags.DEFINE_multi_string(OVERRIDES_FLAG, [], field.metadata["help"],
                                      flag_values=flag_values)
        else:
            _define(TrainConfig, field, defaults.get(field.name, getattr(base, field.name)),
                    flag_values)


def from_flags(flag_values=flags.FLAGS) -> TrainConfig:
    """The config the parsed flags describe (values checked by `validate`)."""
    values = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name == "label_config":
            values[field.name] = labels_lib.LabelConfig(**{
                f.name: flag_values[f.name].value
                for f in dataclasses.fields(labels_lib.LabelConfig)})
        elif field.name == "model_overrides":
            values[field.name] = parse_overrides(flag_values[OVERRIDES_FLAG].value)
        else:
            values[field.name] = flag_values[field.name].value
    return TrainConfig(**values)


def flag_lines(config: TrainConfig) -> list[str]:
    """`config` as absl flagfile lines (`--name=value`); None values are left out (their
    flags default to None)."""

    def line(name, value):
        if isinstance(value, bool):
            return f"--{name}={'true' if value else 'false'}"
        return f"--{name}={value!r}" if isinstance(value, float) else f"--{name}={value}"

    lines = []
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if field.name == "label_config":
            lines += [line(k, v) for k, v in dataclasses.asdict(value).items()]
        elif field.name == "model_overrides":
            lines += [f"--{OVERRIDES_FLAG}={k}={json.dumps(v)}" for k, v in value.items()]
        elif value is not None:
            lines.append(line(field.name, value))
    return lines


def write_flagfile(model_dir: str, config: TrainConfig) -> str:
    """Writes model_dir/flags.txt atomically: `--flagfile` reproduces the run's config."""
    path = os.path.join(model_dir, FLAGFILE)
    fd, tmp = tempfile.mkstemp(dir=model_dir, suffix=".txt.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(flag_lines(config)) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def check_writable_dir(path: str, flag: str) -> None:
    """A folder that exists or can be created here: not a file, under no file, writable.
    URIs (gs://, s3://, ...) are left to the filesystem that opens them."""
    if "://" in path:
        return
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise ValueError(f"{flag} {path}: is a file; expected a folder")
    parent = full
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {parent} is not writable")


def day_start(text: str, flag: str) -> int:
    """'YYYY-MM-DD' -> the day's first second (UTC); a clear error naming `flag`."""
    import datetime

    try:
        day = datetime.datetime.strptime(text, "%Y-%m-%d")
    except (TypeError, ValueError):
        raise ValueError(f"{flag}: {text!r} is not a date YYYY-MM-DD") from None
    return int(day.replace(tzinfo=datetime.timezone.utc).timestamp())


def calibrated_outputs(config: TrainConfig) -> tuple[str, ...]:
    return tuple(o.strip() for o in config.calibrated_outputs.split(",") if o.strip())


def check_evict_after_days(days: float) -> None:
    if not (days >= 0 and math.isfinite(days)):
        raise ValueError(f"--evict_after_days must be >= 0, got {days}")


def validate(config: TrainConfig) -> None:
    """Checks that need no data and no model, run before anything is created."""
    positive = ("batch_size", "eval_batch_size", "steps_per_loop", "vocabulary_examples",
                "cpu_devices")
    for name in positive:
        if getattr(config, name) <= 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(config, name)}")
    for name in ("steps", "warmup_steps", "checkpoint_every", "eval_every", "lora_rank"):
        if getattr(config, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(config, name)}")
    if not config.steps and not (config.epochs > 0 and math.isfinite(config.epochs)):
        raise ValueError(f"--epochs must be > 0 (or --steps > 0), got {config.epochs}")
    if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
        raise ValueError(f"--learning_rate must be > 0, got {config.learning_rate}")
    if not (0.0 <= config.ema_momentum < 1.0):
        raise ValueError(f"--ema_momentum must be in [0, 1), got {config.ema_momentum}")
    if not 0.0 < config.labels_fraction <= 1.0:
        raise ValueError(f"--labels_fraction must be in (0, 1], got {config.labels_fraction}")
    if not 0.0 <= config.calibration_fraction <= 0.5:
        raise ValueError(f"--calibration_fraction must be in [0, 0.5], got "
                         f"{config.calibration_fraction}")
    unknown = sorted(set(calibrated_outputs(config)) - {"click", "purchase", "price_range"})
    if unknown:
        raise ValueError(f"--calibrated_outputs: unknown outputs {unknown}; expected some of "
                         "click, purchase, price_range")
    if config.train_start is not None:
        day_start(config.train_start, "--train_start")
    check_evict_after_days(config.evict_after_days)
    if config.warm_start_optimizer and not config.warm_start_from:
        raise ValueError("--warm_start_optimizer needs --warm_start_from (the run whose "
                         "optimizer state it carries)")
    if config.evict_after_days and not config.warm_start_from:
        raise ValueError("--evict_after_days needs --warm_start_from (only a warm start has "
                         "ids to evict)")
    if config.model_dir:
        check_writable_dir(config.model_dir, "--model_dir")
    if config.data_dir is not None and not contract.is_folder(config.data_dir):
        raise ValueError(f"--data_dir {config.data_dir}: not a directory; expected a contract "
                         "folder (a path or a URI such as file:///...) with events and items "
                         "tables (NAME.csv, NAME.parquet or a folder NAME/ of parts)")
    for name, field in TrainConfig.__dataclass_fields__.items():
        choices = field.metadata.get("choices")
        if choices and getattr(config, name) not in choices:
            raise ValueError(f"--{name} must be one of {', '.join(choices)}, got "
                             f"{getattr(config, name)!r}")
