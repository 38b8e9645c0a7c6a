"""`GbdtModel`: one LightGBM booster per task over `features.NAMES`.

    model = zoo.get("gbdt", "small")
    model.fit(X_train, labels_train, timestamps_train)    # early stopping on the latest slice
    preds = model.predict(X)       # {"click": [n], "purchase": [n], "price_range": [n, K],
                                   #  "demand": [n]}: the multi-task outputs' layout
    model.save(folder); GbdtModel.load(folder)

Early stopping watches the latest `validation_fraction` of the training impressions (by
time: the tree is stopped on the future it will be used on, never on eval labels); the
booster kept is then refitted on every training impression for the rounds found.
"""

from __future__ import annotations

import json
import os

import numpy as np

from zoo.models.gbdt import features as features_lib

TASK_OBJECTIVES = {"click": "binary", "purchase": "binary", "price_range": "multiclass",
                   "demand": "poisson"}
BOOSTER_PARAMS = ("num_leaves", "learning_rate", "min_child_samples", "feature_fraction",
                  "bagging_fraction", "bagging_freq", "lambda_l2", "num_threads", "seed")


class GbdtModel:
    """Not a Keras model: trained by its own `fit`, saved as LightGBM text files."""

    def __init__(self, config: dict):
        self.config = dict(config)
        self.boosters: dict = {}
        self.rounds: dict[str, int] = {}

    @property
    def num_price_ranges(self) -> int:
        return int(self.config["num_price_ranges"])

    def _params(self, task: str) -> dict:
        params = {k: self.config[k] for k in BOOSTER_PARAMS}
        params.update(objective=TASK_OBJECTIVES[task], verbosity=-1,
                      deterministic=True, force_row_wise=True)
        if task == "price_range":
            params["num_class"] = self.num_price_ranges
        return params

    def _rows_and_target(self, task: str, labels: dict):
        if task == "price_range":
            rows = np.flatnonzero(np.asarray(labels["price_range_mask"]) > 0)
            return rows, np.asarray(labels["price_range"])[rows].astype(np.int64)
        y = np.asarray(labels[task], np.float64)
        if task == "demand" and "demand_mask" in labels:  # censored windows are not targets
            rows = np.flatnonzero(np.asarray(labels["demand_mask"]) > 0)
            return rows, y[rows]
        return np.arange(len(y)), y

    def fit(self, x: np.ndarray, labels: dict, timestamps: np.ndarray,
            log=print) -> "GbdtModel":
        import lightgbm as lgb

        timestamps = np.asarray(timestamps)
        categorical = [features_lib.NAMES.index(c) for c in features_lib.CATEGORICAL]
        for task in TASK_OBJECTIVES:
            rows, y = self._rows_and_target(task, labels)
            # The validation slice: the latest share of the rows this task has targets on
            # (a task's targets can end earlier, e.g. demand windows censored by the cut).
            order = np.argsort(timestamps[rows], kind="stable")
            n_valid = int(round(len(rows) * float(self.config["validation_fraction"])))
            is_valid = np.zeros(len(rows), bool)
            is_valid[order[len(rows) - n_valid:]] = True
            params = self._params(task)
            fit_rows, val_rows = rows[~is_valid], rows[is_valid]
            train_set = lgb.Dataset(x[fit_rows], y[~is_valid],
                                    categorical_feature=categorical, free_raw_data=False)
            val_set = lgb.Dataset(x[val_rows], y[is_valid], reference=train_set,
                                  categorical_feature=categorical)
            stopped = lgb.train(params, train_set, num_boost_round=int(self.config["max_rounds"]),
                                valid_sets=[val_set], callbacks=[lgb.early_stopping(
                                    int(self.config["early_stopping_rounds"]), verbose=False)])
            self.rounds[task] = max(int(stopped.best_iteration or stopped.current_iteration()),
                                    1)
            full = lgb.Dataset(x[rows], y, categorical_feature=categorical)
            self.boosters[task] = lgb.train(params, full, num_boost_round=self.rounds[task])
            if log:
                log(f"  {task:<12} {self.rounds[task]:>5} rounds (early-stopped on the latest "
                    f"{len(val_rows):,} training impressions), refitted on {len(rows):,}")
        return self

    def predict(self, x: np.ndarray) -> dict:
        out = {task: self.boosters[task].predict(x) for task in TASK_OBJECTIVES}
        out["price_range"] = np.asarray(out["price_range"]).reshape(len(x),
                                                                     self.num_price_ranges)
        return {k: np.asarray(v, np.float64) for k, v in out.items()}

    def num_leaves(self) -> int:
        """Leaves of every tree: the tree model's count of fitted values."""
        return int(sum(t["num_leaves"] for b in self.boosters.values()
                       for t in b.dump_model()["tree_info"]))

    def save(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        for task, booster in self.boosters.items():
            tmp = os.path.join(folder, f"{task}.txt.tmp")
            booster.save_model(tmp)
            os.replace(tmp, os.path.join(folder, f"{task}.txt"))
        tmp = os.path.join(folder, "config.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"config": self.config, "rounds": self.rounds,
                       "features": list(features_lib.NAMES)}, f, indent=2, sort_keys=True)
        os.replace(tmp, os.path.join(folder, "config.json"))

    @classmethod
    def load(cls, folder: str) -> "GbdtModel":
        import lightgbm as lgb

        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            saved = json.load(f)
        if saved["features"] != list(features_lib.NAMES):
            raise ValueError(f"{folder}: written for other features ({saved['features']}); "
                             "retrain it")
        model = cls(saved["config"])
        model.rounds = saved["rounds"]
        model.boosters = {task: lgb.Booster(model_file=os.path.join(folder, f"{task}.txt"))
                          for task in TASK_OBJECTIVES}
        return model


def build(config: dict) -> GbdtModel:
    return GbdtModel(config)
