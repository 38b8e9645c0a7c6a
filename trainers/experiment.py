"""`python -m trainers.experiment`: what each part of the zoo buys, on one data set and split.

For every labels fraction F (fine-tuning sees the labels of only that fraction of the
training impressions; pre-training and vocabularies see all of their features) it trains
and evaluates, on the same time split:

  popularity          the non-neural baseline (statistics of the labelled impressions)
  gbdt                LightGBM on the standard log features (the yardstick)
  dnn_mtl             pooled embeddings + MLP towers (the classic deep recommender)
  bert_mtl            the transformer, from scratch
  bert_mtl+pretrain   pre-trained on the logs (trainers.pretrain, once), then fine-tuned
  bert_mtl+minilm     query/title tower initialised from all-MiniLM-L6-v2
  bert_mtl+lora       pre-trained, then LoRA adapters + heads only
  bert_mtl+lora_emb   the same, and the encoder's input embeddings train too
  bert_mtl-naive      purchase head trained on clicked impressions only (vs ESMM)
  mmoe, ple           the other multi-task structures (opt in with --runs)

and prints one table (rows = runs, columns = every metric, the simulator's oracle when
present), written as CSV and a PNG bar chart under --output_dir. Runs are resumable: a
finished run's model_dir is re-evaluated, not retrained.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os

from zoo import quiet  # noqa: E402
quiet.start()  # before TensorFlow loads: its start-up lines off
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from trainers.core import config as config_lib  # noqa: E402
from zoo.data import contract  # noqa: E402

# name -> (model, overrides of TrainConfig, model config overrides, needs pre-training)
RUNS = {
    "popularity": ("popularity", {}, {}, False),
    "gbdt": ("gbdt", {}, {}, False),
    "dnn_mtl": ("dnn_mtl", {}, {}, False),
    "bert_mtl": ("bert_mtl", {}, {}, False),
    "bert_mtl+pretrain": ("bert_mtl", {}, {}, True),
    "bert_mtl+minilm": ("bert_mtl", {}, {"text_encoder": "minilm", "text_encoder_layers": 2},
                        False),
    "bert_mtl+lora": ("bert_mtl", {"lora_rank": -1}, {}, True),  # -1: --lora_rank
    "bert_mtl+lora_emb": ("bert_mtl", {"lora_rank": -1, "lora_train_embeddings": True}, {},
                          True),
    "bert_mtl-naive": ("bert_mtl", {}, {"purchase_head": "naive"}, False),
    "mmoe": ("mmoe", {}, {}, False),
    "ple": ("ple", {}, {}, False),
}
DEFAULT_RUNS = ("popularity", "gbdt", "dnn_mtl", "bert_mtl", "bert_mtl+pretrain", "bert_mtl+minilm",
                "bert_mtl+lora", "bert_mtl+lora_emb", "bert_mtl-naive")


@dataclasses.dataclass
class ExperimentConfig:
    base: config_lib.TrainConfig  # data, preset, batch, epochs, seed, ... of every run
    output_dir: str = os.path.join("runs", "experiment")
    fractions: tuple = (1.0, 0.1)
    runs: tuple = DEFAULT_RUNS
    pretrain_epochs: float = 1.0
    pretrain_steps: int = 0
    # Pre-training's peak learning rate: `trainers.pretrain`'s default, not the rows'.
    pretrain_learning_rate: float = 1e-3
    # The pre-trained rows' pretext (`trainers.pretrain --pretext`) and its negatives: the
    # one measured to pay at 10 % of the labels (BUILD_NOTES, "A pretext that trains what
    # the heads read" and "Both pretexts at once").
    pretext: str = "next_session"
    pretext_negatives: int = 15
    lora_rank: int = 8
    # Passes over the labelled impressions at a labels fraction < 1 (unless --steps). One
    # pass at 10 % is 60 steps of 256 on the default shop: the warmup and the cosine decay
    # are squeezed into them and the network stops short of what the labels allow; two
    # passes were measured better on both AUCs on the default shop and on a shop drawn with
    # other settings, three worse on click (BUILD_NOTES, "More passes at 10 % of the labels").
    fraction_epochs: float = 2.0


def _fraction_name(f: float) -> str:
    return f"labels_{round(f * 100):g}pct"


def row_epochs(config: ExperimentConfig, fraction: float) -> float:
    """The passes of one row's training: the base run's at 100 % of the labels (or when
    --steps fixes the length), `fraction_epochs` below it."""
    if fraction >= 1.0 or config.base.steps:
        return config.base.epochs
    return config.fraction_epochs


def pretrain_dir(config: ExperimentConfig) -> str:
    return os.path.join(config.output_dir, "pretrain")


def run(config: ExperimentConfig) -> list[dict]:
    """Trains and evaluates every (fraction, run); returns the result rows."""
    from trainers.core import train_lib
    from trainers.core.pretrain_task import DEFAULT_TASK_WEIGHTS, make_task

    unknown = sorted(set(config.runs) - set(RUNS))
    if unknown:
        raise ValueError(f"--runs: unknown {unknown}; known: {list(RUNS)}")
    for f in config.fractions:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"--labels_fraction values must be in (0, 1], got {f}")
    if not (config.fraction_epochs > 0 and math.isfinite(config.fraction_epochs)):
        raise ValueError(f"--fraction_epochs must be > 0, got {config.fraction_epochs}")
    if not (config.pretrain_learning_rate > 0 and math.isfinite(config.pretrain_learning_rate)):
        raise ValueError(f"--pretrain_learning_rate must be > 0, got "
                         f"{config.pretrain_learning_rate}")
    pretraining = make_task(config.pretext, config.pretext_negatives)  # checked up front
    base = config.base
    if any(RUNS[r][3] for r in config.runs):
        pt = dataclasses.replace(
            base, model="bert_mtl", model_dir=pretrain_dir(config),
            epochs=config.pretrain_epochs, steps=config.pretrain_steps,
            learning_rate=config.pretrain_learning_rate,
            task_weights=DEFAULT_TASK_WEIGHTS, export_base=None)
        train_lib.run_experiment(pretraining, pt)

    rows = []
    for fraction in config.fractions:
        for name in config.runs:
            model, train_overrides, model_overrides, pretrained = RUNS[name]
            overrides = dict(train_overrides)
            if overrides.get("lora_rank") == -1:
                overrides["lora_rank"] = config.lora_rank
            run_config = dataclasses.replace(
                base, model=model, model_overrides={**base.model_overrides, **model_overrides},
                model_dir=os.path.join(config.output_dir, _fraction_name(fraction), name),
                labels_fraction=fraction, export_base=None, epochs=row_epochs(config, fraction),
                init_checkpoint=pretrain_dir(config) if pretrained else None, **overrides)
            if base.verbose:
                print(f"\n=== {name} at {fraction:.0%} of the labels ===")
            result = train_lib.train(run_config)
            rows.append({"fraction": fraction, "run": name, "metrics": result.get("metrics", {}),
                         "oracle": result.get("oracle"),
                         "train_seconds": result["train_seconds"], "steps": result["step"],
                         "trainable_parameters": result["trainable_parameters"]})
    table = format_rows(rows)
    print("\n" + table)
    print("\n" + "\n".join(shape_checks(rows)))
    write_outputs(rows, config.output_dir, table)
    return rows


def _with_oracle(rows: list[dict]) -> list[dict]:
    out = []
    for fraction in dict.fromkeys(r["fraction"] for r in rows):
        group = [r for r in rows if r["fraction"] == fraction]
        out += group
        oracle = next((r["oracle"] for r in group if r.get("oracle")), None)
        if oracle:
            out.append({"fraction": fraction, "run": "oracle", "metrics": oracle,
                        "train_seconds": float("nan"), "steps": 0,
                        "trainable_parameters": 0})
    return out


def format_rows(rows: list[dict]) -> str:
    from trainers.core.metrics import SUMMARY_METRICS

    header = ["labels", "run", *SUMMARY_METRICS, "train s", "trainable"]
    lines = [[f"{r['fraction']:.0%}", r["run"],
              *(f"{r['metrics'].get(m, float('nan')):.4f}" for m in SUMMARY_METRICS),
              f"{r['train_seconds']:.0f}", f"{r['trainable_parameters']:,}"]
             for r in _with_oracle(rows)]
    widths = [max(len(x[i]) for x in [header] + lines) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), "-" * (sum(widths) + 2 * len(widths))]
                     + [fmt.format(*x) for x in lines])


def shape_checks(rows: list[dict]) -> list[str]:
    """The expected shape of the comparison, checked on the numbers (never adjusted)."""
    def metric(fraction, run, m="click/auc"):
        r = next((r for r in rows if r["fraction"] == fraction and r["run"] == run), None)
        return None if r is None else r["metrics"].get(m)

    out = []
    for f in dict.fromkeys(r["fraction"] for r in rows):
        checks = [("transformer >= GBDT (click AUC)", "bert_mtl", "gbdt", "click/auc"),
                  ("transformer >= GBDT (purchase AUC)", "bert_mtl", "gbdt", "purchase/auc"),
                  ("transformer >= DNN (click AUC)", "bert_mtl", "dnn_mtl", "click/auc"),
                  ("DNN >= baseline (click AUC)", "dnn_mtl", "popularity", "click/auc"),
                  ("pre-trained >= scratch (click AUC)", "bert_mtl+pretrain", "bert_mtl",
                   "click/auc"),
                  ("pre-trained >= scratch (purchase AUC)", "bert_mtl+pretrain", "bert_mtl",
                   "purchase/auc"),
                  ("ESMM >= naive (purchase AUC)", "bert_mtl", "bert_mtl-naive",
                   "purchase/auc")]
        for text, a, b, m in checks:
            va, vb = metric(f, a, m), metric(f, b, m)
            if va is not None and vb is not None:
                out.append(f"{f:>5.0%} labels: {text}: {va:.4f} vs {vb:.4f} -> "
                           f"{'yes' if va >= vb else 'NO'}")
    return out


def write_outputs(rows: list[dict], output_dir: str, table: str) -> None:
    from trainers.core.metrics import METRIC_NAMES

    os.makedirs(output_dir, exist_ok=True)
    full = _with_oracle(rows)
    path = os.path.join(output_dir, "results.csv")
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["labels_fraction", "run", *METRIC_NAMES, "train_seconds", "steps",
                    "trainable_parameters"])
        for r in full:
            w.writerow([r["fraction"], r["run"],
                        *(r["metrics"].get(m, float("nan")) for m in METRIC_NAMES),
                        r["train_seconds"], r["steps"], r["trainable_parameters"]])
    os.replace(path + ".tmp", path)
    with open(os.path.join(output_dir, "results.txt"), "w") as f:
        f.write(table + "\n\n" + "\n".join(shape_checks(rows)) + "\n")
    plot(full, os.path.join(output_dir, "results.png"))


def plot(rows: list[dict], path: str) -> None:
    """One panel per main metric; bars = runs, one colour per labels fraction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from trainers.core.metrics import MAIN_METRICS

    runs = list(dict.fromkeys(r["run"] for r in rows))
    fractions = list(dict.fromkeys(r["fraction"] for r in rows))
    fig, axes = plt.subplots(1, len(MAIN_METRICS), figsize=(5 * len(MAIN_METRICS), 4.5))
    width = 0.8 / len(fractions)
    for ax, m in zip(axes, MAIN_METRICS):
        for i, f in enumerate(fractions):
            vals = [next((r["metrics"].get(m, math.nan) for r in rows
                          if r["run"] == run and r["fraction"] == f), math.nan) for run in runs]
            ax.bar([x + i * width for x in range(len(runs))], vals, width,
                   label=f"{f:.0%} labels")
        ax.set_title(m + (" (lower is better)" if "deviance" in m else ""))
        ax.set_xticks([x + width * (len(fractions) - 1) / 2 for x in range(len(runs))])
        ax.set_xticklabels(runs, rotation=45, ha="right", fontsize=8)
        if "auc" in m:
            ax.set_ylim(0.5, 1.0)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


# --- flags -------------------------------------------------------------------------------
FLAGS = flags.FLAGS


def define_flags():
    config_lib.define_flags()
    defaults = ExperimentConfig(base=None)
    flags.DEFINE_list("labels_fractions", [str(f) for f in defaults.fractions],
                      "Labels fractions to run.")
    flags.DEFINE_list("runs", list(defaults.runs), f"Runs, of {list(RUNS)}.")
    flags.DEFINE_string("output_dir", defaults.output_dir, "Model dirs, results.csv/.txt/.png.")
    flags.DEFINE_float("pretrain_epochs", defaults.pretrain_epochs,
                       "Pre-training passes over the training split.")
    flags.DEFINE_integer("pretrain_steps", defaults.pretrain_steps,
                         "Pre-training steps (> 0 overrides epochs).")
    flags.DEFINE_float("pretrain_learning_rate", defaults.pretrain_learning_rate,
                       "Pre-training's peak learning rate (--learning_rate is the rows').")
    flags.DEFINE_string("pretext", defaults.pretext, "Pre-training task of the pre-trained "
                        "rows: masked, next_session or joint (python -m trainers.pretrain --help).")
    flags.DEFINE_integer("pretext_negatives", defaults.pretext_negatives,
                         "--pretext next_session or joint: negatives per session.")
    flags.DEFINE_float("fraction_epochs", defaults.fraction_epochs,
                       "Passes over the labelled impressions of a labels fraction < 1 "
                       "(--epochs is the 100 % rows'; --steps fixes every row's length).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        base = dataclasses.replace(config_lib.from_flags(), lora_rank=0,
                                   lora_train_embeddings=False, init_checkpoint=None)
        if FLAGS["labels_fraction"].present:
            raise ValueError("use --labels_fractions (a list) with the experiment")
        config = ExperimentConfig(
            base=base, output_dir=FLAGS.output_dir,
            fractions=tuple(float(f) for f in FLAGS.labels_fractions), runs=tuple(FLAGS.runs),
            pretrain_epochs=FLAGS.pretrain_epochs, pretrain_steps=FLAGS.pretrain_steps,
            pretrain_learning_rate=FLAGS.pretrain_learning_rate,
            lora_rank=FLAGS.lora_rank or ExperimentConfig.lora_rank,
            fraction_epochs=FLAGS.fraction_epochs, pretext=FLAGS.pretext,
            pretext_negatives=FLAGS.pretext_negatives)
        run(config)
    except (contract.ContractError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
