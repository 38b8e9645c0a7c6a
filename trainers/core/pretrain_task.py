"""Self-supervised pre-training of a family's encoder on the logs, three pretexts:

  masked        (`PretrainTask`) masked behaviour modelling (BERT4Rec: mask history
                events, predict their item and category), masked WordPiece modelling of the
                query and next-event prediction at the hidden candidate slot
                (`zoo.models.bert_mtl.pretrainer`), on every training impression's input
                sequence; the impression labels are unused, the next event comes from the log
  next_session  (`NextSessionPretrainTask`) which of a session's candidates it clicked:
                the clicked item among catalogue items it did not click, each with every
                context feature of the pair, so the path the heads read trains too

Both leave

  model_dir/encoder/encoder*     the backbone's weights: `--init_checkpoint model_dir` of
                                 the multi-task trainer starts from them (heads fresh)
  model_dir/vocabulary.json      the fine-tuning run reuses it (embedding rows must match)
  model_dir/pretrain_config.json, metrics.json (top-1 accuracy of every task on the eval
                                 split)
"""

from __future__ import annotations

import dataclasses
import os

from trainers.core import base_task, evaluation, rundir

DEFAULT_TASK_WEIGHTS = "item=1,category=1,query=1,next_item=1,next_category=1"
ENCODER_PREFIX = os.path.join("encoder", "encoder")
# Batches of the eval split the top-1 accuracies are measured on.
EVAL_BATCHES = 20


def encoder_path(model_dir: str) -> str:
    return os.path.join(model_dir, ENCODER_PREFIX)


class PretrainTask(base_task.Task):
    name = "pretrain"
    flag_defaults = {"task_weights": DEFAULT_TASK_WEIGHTS, "learning_rate": 1e-3}
    task_weights_help = ("Loss weight per pre-training task (item, category, query, "
                         "next_item, next_category); a task left out weighs 1, =0 turns it "
                         "off.")

    # What --task_weights means when left at an entry point's default (`trainers.pretrain`
    # defines the flag before the pretext is known; `TrainConfig`'s is the multi-task
    # trainer's).
    default_task_weights = DEFAULT_TASK_WEIGHTS

    def __init__(self):
        self._masker = None

    def task_weights(self, config) -> dict:
        from trainers.core.config import DEFAULT_TASK_WEIGHTS as TRAINER_DEFAULT
        from trainers.core.config import parse_task_weights

        text = config.task_weights
        if text in (DEFAULT_TASK_WEIGHTS, TRAINER_DEFAULT, ""):
            text = self.default_task_weights
        return parse_task_weights(text, self.loss_names)

    @property
    def loss_names(self):
        from zoo.models.bert_mtl.pretrainer import TASKS

        return TASKS

    def default_model_dir(self, config) -> str:
        return os.path.join("runs", f"{config.model}_{config.preset}_pretrain")

    def check(self, config, model_config, spec) -> None:
        if not spec.pretrainable:
            raise ValueError(f"--model {config.model} has no transformer encoder to pre-train")
        if config.export_base or config.init_checkpoint or config.labels_fraction < 1.0:
            raise ValueError("--export_base, --init_checkpoint and --labels_fraction do not "
                             "apply to pre-training")
        if config.strategy == "parameter_server":
            # The masked-item head is tied to the item table: every step would read the
            # whole table from the parameter servers (a sampled softmax would be needed).
            raise ValueError("trainers.pretrain does not support --strategy=parameter_server "
                             "yet; use one_device, mirrored or multi_worker_mirrored")

    def run_spec(self, config, model_config):
        return {"model": config.model, "preset": config.preset, "model_config": model_config,
                "label_config": dataclasses.asdict(config.label_config), "task": "pretrain"}

    def build_network(self, run):
        run.model = self._zoo_model(run)
        return self._masked_pretrainer(run)

    def _masked_pretrainer(self, run):
        """The masked tasks' heads on `run.model`'s backbone, built on the sample batch
        (and the masker the datasets use)."""
        from zoo.models.bert_mtl import pretrainer as pretrainer_lib

        self._masker = pretrainer_lib.make_masker(run.model.preprocessor, run.model_config)
        net = pretrainer_lib.BertMtlPretrainer(run.model.backbone, self._masker.num_events,
                                               self._masker.num_tokens, name="pretrainer")
        net(self._masker(run.model.preprocessor(evaluation.raw_features(run.sample)))[0])
        return net

    @staticmethod
    def _zoo_model(run):
        """The family's model, built from the run's vocabulary and seed (what pre-training
        trains and whose backbone it keeps)."""
        import keras
        import zoo

        config = run.config
        # Seeded right before the build (as the multi-task task): preparation and
        # vocabulary fitting, which a resumed run skips, must not move the initial weights.
        keras.utils.set_random_seed(config.seed)
        return zoo.get(config.model, config.preset, vocabulary=run.vocabulary,
                       num_price_ranges=config.label_config.num_price_ranges,
                       **config.model_overrides)

    def _masked(self, run):
        from zoo.models.bert_mtl import pretrainer as pretrainer_lib

        preprocessor, masker = run.model.preprocessor, self._masker

        def masked(batch):
            x, targets = masker(preprocessor(evaluation.raw_features(batch)))
            return x, {**targets, **pretrainer_lib.next_event_targets(preprocessor, batch)}

        return masked

    def train_dataset(self, run, ctx):
        import tensorflow as tf
        from zoo.data import pipeline

        config = run.config
        per_replica = ctx.get_per_replica_batch_size(config.batch_size)
        per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        ds = pipeline.make_dataset(
            run.train_files, batch_size=per_replica, shuffle=True, repeat=True,
            seed=config.seed, cache=config.cache_dataset, drop_remainder=True,
            with_labels=False, with_pretext=True,
            history_length=config.label_config.history_length, input_context=ctx,
            skip_batches=run.start_step * per_step)
        return ds.map(self._masked(run), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    def describe(self, run):
        c = run.config
        return (f"pre-training the {c.model}/{c.preset} encoder {self._network_words(run)} "
                f"under {c.strategy} for {run.steps} steps of {c.batch_size}, from step "
                f"{run.start_step}; model_dir={run.model_dir}")

    def _network_words(self, run) -> str:
        backbone = run.model.backbone.count_params()
        return f"({backbone:,} parameters; heads {run.network.count_params() - backbone:,})"

    def evaluate(self, run, result):
        """Top-1 accuracy on (a part of) the eval split, with a fixed masking seed."""
        result["metrics"] = self._masked_metrics(run, run.network)
        if run.config.verbose:
            print("top-1 accuracy on the eval split: " + ", ".join(
                f"{k} {v:.4f}" for k, v in result["metrics"].items()))

    def _masked_metrics(self, run, net) -> dict:
        """The masked tasks' top-1 accuracies of `net` (a `BertMtlPretrainer`)."""
        import tensorflow as tf
        from zoo.data import pipeline
        from zoo.models.bert_mtl import pretrainer as pretrainer_lib

        config = run.config
        split = "eval" if run.has_eval else "train"
        tf.random.set_seed(config.seed)
        eval_ds = pipeline.make_dataset(pipeline.split_files(run.builder, split),
                                        batch_size=config.eval_batch_size, with_labels=False,
                                        with_pretext=True,
                                        history_length=config.label_config.history_length)
        forward = tf.function(lambda x: net(x, training=False))
        sums, batches = {}, 0
        for batch in eval_ds.map(self._masked(run)).take(EVAL_BATCHES):
            acc = pretrainer_lib.masked_accuracy(batch[1], forward(batch[0]))
            sums = {k: sums.get(k, 0.0) + v for k, v in acc.items()}
            batches += 1
        return {f"{k}/{'accuracy' if k.startswith('next_') else 'masked_accuracy'}":
                v / max(batches, 1) for k, v in sums.items()}

    def save(self, run, result):
        from zoo.models.bert_mtl import pretrainer as pretrainer_lib

        pretrainer_lib.save_encoder(run.model.backbone, encoder_path(run.model_dir))
        rundir.write_json(os.path.join(run.model_dir, "pretrain_config.json"), {
            **rundir.jsonable(dataclasses.asdict(run.config)), "model_dir": run.model_dir,
            "total_steps": run.steps, "model_config": run.model_config})


PRETEXTS = ("masked", "next_session", "joint")
# Sessions per call of the candidates' feature builder (each call re-reads the whole log).
SESSIONS_PER_CHUNK = 2000
# Eval-split sessions the next-session accuracy is measured on.
EVAL_SESSIONS = 2000


class NextSessionPretrainTask(PretrainTask):
    """Pre-training on the contrastive next-session task (`NextSessionPretrainer`): per
    training session that clicked, the clicked item and `num_negatives` catalogue items
    it did not click, each with the raw features an impression of it at the session's
    start would have had (`zoo.data.requests`); the ranker learns to put the clicked one
    first. The sessions and their candidates come from the log before the eval split,
    the log cut there; the impressions' labels are not read. Leaves what `PretrainTask`
    leaves (the backbone as `encoder/`), so `--init_checkpoint` is the same.

    The candidates' preprocessed features are held in memory (2,212 bytes a candidate
    row with the `small` preset): fine for the simulated shops, not for a log of millions
    of sessions, which would want them written as examples first."""

    name = "pretrain_next_session"
    default_task_weights = "next_session=1"  # one loss: other names are refused

    def __init__(self, num_negatives: int = 15):
        super().__init__()
        if num_negatives < 1:
            raise ValueError(f"--pretext_negatives must be >= 1, got {num_negatives}")
        self.num_candidates = 1 + int(num_negatives)
        # "tables": (the log, the eval split's start); "drawn/<split>": `_drawn`'s;
        # "<split>": `groups`' preprocessed rows.
        self._cache = {}

    @property
    def loss_names(self):
        return ("next_session",)

    def check(self, config, model_config, spec) -> None:
        super().check(config, model_config, spec)
        if config.batch_size % self.num_candidates:
            raise ValueError(f"--batch_size {config.batch_size} must be a multiple of the "
                             f"{self.num_candidates} candidates of a session "
                             "(--pretext_negatives + 1)")

    def run_spec(self, config, model_config):
        return {**super().run_spec(config, model_config), "task": self.name,
                "num_candidates": self.num_candidates}

    def _tables(self, run):
        from zoo.data import contract, prepare as prepare_lib

        if "tables" not in self._cache:
            tables = contract.read_contract(prepare_lib.resolve_contract_dir(
                run.config.data_dir))
            cut = contract.split_time(tables.events["timestamp"],
                                      run.config.label_config.eval_fraction)
            self._cache["tables"] = (tables, cut)
        return self._cache["tables"]

    def _drawn(self, run, split: str):
        """(the log the split's features are read from, its sessions that clicked, their
        candidates [G, C]); drawn once per split, before any model exists."""
        import numpy as np
        from zoo.data import requests as requests_lib

        key = "drawn/" + split
        if key not in self._cache:
            tables, cut = self._tables(run)
            first = int(np.asarray(tables.events["timestamp"]).min())
            if split == "train":
                tables = requests_lib.events_before(tables, cut)  # no click after the split
                reqs = requests_lib.session_requests(tables, first, cut)
                start, end = first, cut
            else:
                reqs = requests_lib.session_requests(tables, cut)
                start, end = cut, int(np.asarray(tables.events["timestamp"]).max()) + 1
            reqs, candidates = requests_lib.next_session_candidates(
                tables, reqs, start, end, self.num_candidates - 1,
                seed=run.config.seed + (split != "train"))
            if split != "train":
                keep = np.arange(min(EVAL_SESSIONS, len(reqs)))
                reqs, candidates = reqs.take(keep), candidates[keep]
            if split == "train" and not len(reqs):
                raise ValueError("--pretext next_session: no session of the training split "
                                 "clicked an item")
            self._cache[key] = (tables, reqs, candidates)
        return self._cache[key]

    def groups(self, run, split: str):
        """(preprocessed features, {"next_session": targets}) of a split's sessions, numpy,
        G x C rows, a session's candidates consecutive; built once per split."""
        import numpy as np
        import tensorflow as tf
        from zoo.data import requests as requests_lib
        from zoo.models.features import RAW_FEATURES

        if split in self._cache:
            return self._cache[split]
        tables, reqs, candidates = self._drawn(run, split)
        preprocess = tf.function(run.model.preprocessor, autograph=False)
        bar = None
        if run.config.verbose and run.chief:
            import keras

            print(f"next-session pretext: {len(reqs):,} {split} sessions x "
                  f"{self.num_candidates} candidates")
            bar = keras.utils.Progbar(len(reqs), unit_name="session")
        parts = []
        for s in range(0, len(reqs), SESSIONS_PER_CHUNK):
            sel = np.arange(s, min(s + SESSIONS_PER_CHUNK, len(reqs)))
            raw = requests_lib.candidate_features(tables, reqs.take(sel), candidates[sel],
                                                  run.config.label_config)
            raw = {k: tf.constant(raw[k].astype(str) if raw[k].dtype == object else raw[k])
                   for k in RAW_FEATURES}
            parts.append({k: v.numpy() for k, v in preprocess(raw).items()})
            if bar is not None:
                bar.update(sel[-1] + 1)
        x = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        targets = np.zeros((len(reqs), self.num_candidates), np.float32)
        targets[:, 0] = 1.0
        self._cache[split] = (x, {"next_session": targets.reshape(-1)})
        return self._cache[split]

    def num_training_examples(self, run) -> int:
        # Candidate rows: --batch_size counts rows, as an impression is one for the ranker.
        return len(self._drawn(run, "train")[1]) * self.num_candidates

    def build_network(self, run):
        import tensorflow as tf
        from zoo.models.bert_mtl import pretrainer as pretrainer_lib

        run.model = self._zoo_model(run)
        run.model(run.model.preprocessor(evaluation.raw_features(run.sample)))
        net = pretrainer_lib.NextSessionPretrainer(run.model, self.num_candidates,
                                                   name="next_session_pretrainer")
        x, y = self.groups(run, "train")
        sample = {k: tf.constant(v[:self.num_candidates]) for k, v in x.items()}
        with tf.GradientTape() as tape:
            out = net(sample, training=True)
            loss = tf.reduce_sum(net.per_example_losses(
                {"next_session": tf.constant(y["next_session"][:self.num_candidates])},
                out)["next_session"])
        # The towers of the other tasks (conversion, price range, demand) take no part:
        # left out of the optimizer, which would otherwise warn of missing gradients.
        for v, g in zip(net.trainable_variables,
                        tape.gradient(loss, net.trainable_variables)):
            if g is None:
                v.trainable = False
        return net

    def train_dataset(self, run, ctx):
        import tensorflow as tf

        config = run.config
        x, y = self.groups(run, "train")
        C = self.num_candidates
        per_replica = ctx.get_per_replica_batch_size(config.batch_size)
        if per_replica % C:
            raise ValueError(f"--batch_size {config.batch_size}: {per_replica} rows per "
                             f"replica is not a multiple of the {C} candidates of a session")
        per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines

        def grouped(a):
            return a.reshape((-1, C) + a.shape[1:])

        ds = tf.data.Dataset.from_tensor_slices(
            ({k: grouped(v) for k, v in x.items()}, {k: grouped(v) for k, v in y.items()}))
        ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        ds = ds.shuffle(len(y["next_session"]) // C, seed=config.seed,
                        reshuffle_each_iteration=True).repeat()
        ds = ds.batch(per_replica // C, drop_remainder=True)

        def flat(a):  # [groups, C, ...] -> [groups * C, ...], static shapes kept
            return tf.reshape(a, [per_replica] + a.shape[2:].as_list())

        ds = ds.map(lambda a, b: (tf.nest.map_structure(flat, a),
                                  tf.nest.map_structure(flat, b)))
        return ds.skip(run.start_step * per_step).prefetch(tf.data.AUTOTUNE)

    def _network_words(self, run) -> str:
        return (f"({run.model.backbone.count_params():,} parameters) on the next-session "
                f"task ({run.num_train // self.num_candidates:,} sessions x "
                f"{self.num_candidates} candidate rows)")

    def evaluate(self, run, result):
        """Top-1 accuracy and MRR of the clicked item among its session's candidates, on
        (at most EVAL_SESSIONS) sessions of the eval split."""
        result["metrics"] = self._session_metrics(run, run.network)

    def _session_metrics(self, run, net) -> dict:
        import numpy as np
        import tensorflow as tf
        from zoo.models.bert_mtl import pretrainer as pretrainer_lib

        split = "eval" if run.has_eval else "train"
        if not len(self._drawn(run, split)[1]):
            print(f"next-session task: no session of the {split} split clicked; not measured")
            return {}
        x, y = self.groups(run, split)
        forward = tf.function(lambda a: net(a, training=False)["next_session"],
                              autograph=False, reduce_retracing=True)
        step = self.num_candidates * max(1, run.config.eval_batch_size // self.num_candidates)
        logits = [forward({k: tf.constant(v[s:s + step]) for k, v in x.items()}).numpy()
                  for s in range(0, len(y["next_session"]), step)]
        metrics = pretrainer_lib.group_accuracy(
            y["next_session"].reshape(-1, self.num_candidates), np.concatenate(logits))
        if run.config.verbose:
            print(f"next-session task on {len(y['next_session']) // self.num_candidates:,} "
                  f"{split} sessions: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics


# The joint pretext's default weights: the masked tasks at a fifth of the next-session
# task's (measured against 1:1 in BUILD_NOTES, "Both pretexts at once").
JOINT_TASK_WEIGHTS = ("item=0.2,category=0.2,query=0.2,next_item=0.2,next_category=0.2,"
                      "next_session=1")


class JointPretrainTask(NextSessionPretrainTask):
    """Both pretexts at every step (`JointPretrainer`): a batch of masked training
    impressions and a batch of sessions' candidates, the losses summed (`--task_weights`
    weighs the six tasks: the masked ones and `next_session`; JOINT_TASK_WEIGHTS by
    default). The masked tasks keep what they teach the history and query paths (the price-range head leans on them), the
    next-session task trains the candidate's path they hide. A pass is one over the
    sessions' candidate rows, as for `next_session`; the impressions repeat as needed.
    Leaves what `PretrainTask` leaves."""

    name = "pretrain_joint"
    default_task_weights = JOINT_TASK_WEIGHTS

    @property
    def loss_names(self):
        from zoo.models.bert_mtl.pretrainer import TASKS

        return TASKS + ("next_session",)

    def build_network(self, run):
        from zoo.models.bert_mtl import pretrainer as pretrainer_lib

        session = super().build_network(run)  # the ranker, its unused towers frozen
        return pretrainer_lib.JointPretrainer(self._masked_pretrainer(run), session,
                                              name="joint_pretrainer")

    def train_dataset(self, run, ctx):
        import tensorflow as tf

        masked = PretrainTask.train_dataset(self, run, ctx)
        session = super().train_dataset(run, ctx)
        return tf.data.Dataset.zip(masked, session).map(
            lambda m, s: ({"masked": m[0], "session": s[0]}, {**m[1], **s[1]}))

    def _network_words(self, run) -> str:
        return (f"({run.model.backbone.count_params():,} parameters) on the masked and the "
                f"next-session tasks ({run.num_train // self.num_candidates:,} sessions x "
                f"{self.num_candidates} candidate rows a pass, as many masked impressions)")

    def evaluate(self, run, result):
        result["metrics"] = {**self._masked_metrics(run, run.network.masked),
                             **self._session_metrics(run, run.network.session)}
        if run.config.verbose:
            print("pre-training tasks on the eval split: " + ", ".join(
                f"{k} {v:.4f}" for k, v in result["metrics"].items()))


def make_task(pretext: str = "masked", negatives: int = 15) -> PretrainTask:
    """The pre-training task of a --pretext (`PRETEXTS`)."""
    if pretext not in PRETEXTS:
        raise ValueError(f"--pretext must be one of {PRETEXTS}, got {pretext!r}")
    if pretext == "next_session":
        return NextSessionPretrainTask(negatives)
    if pretext == "joint":
        return JointPretrainTask(negatives)
    return PretrainTask()
