"""The shape of the house: imports point one way, flags come from the config once."""

import ast
import dataclasses
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from trainers.core import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("zoo", "trainers", "export")
ENTRY_POINTS = ("trainers.multitask", "trainers.pretrain", "trainers.predict",
                "trainers.experiment", "trainers.launch")


def _modules() -> dict[str, str]:
    out = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[module.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, anywhere in the file (an import inside a
    function counts: it runs whenever the function does)."""
    modules = _modules()

    def resolve(name):  # the longest prefix that is a module of the project
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in modules:
                return candidate
        return None

    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(resolve(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:  # `from pkg import mod` imports pkg.mod
                    targets.add(resolve(f"{node.module}.{a.name}") or resolve(node.module))
        graph[module] = {t for t in targets if t and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # trainers.core.train_lib imports trainers.core.loop inside run_experiment only.
    assert "trainers.core.loop" in graph["trainers.core.train_lib"]
    assert "zoo.models.bert_mtl" in graph["zoo.registry"]  # inside a function too


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_export_and_the_library_use_no_entry_point():
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith(("export.", "trainers.core", "zoo")):
            assert not targets & set(ENTRY_POINTS), (module, targets & set(ENTRY_POINTS))
        if module.startswith(("zoo", "trainers.core")):  # data and models -> training -> export
            assert not any(t.startswith("export") for t in targets), (module, targets)
        if module.startswith("zoo"):
            assert not any(t.startswith("trainers") for t in targets), (module, targets)


def test_families_do_not_import_the_registry():
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("zoo.models."):
            assert "zoo.registry" not in targets and "zoo" not in targets, module


# --- flags ---------------------------------------------------------------------------------
def _field_names():
    names = []
    for field in dataclasses.fields(config_lib.TrainConfig):
        if field.name == "label_config":
            names += [f.name for f in dataclasses.fields(config_lib.labels_lib.LabelConfig)]
        elif field.name == "model_overrides":
            names.append(config_lib.OVERRIDES_FLAG)
        else:
            names.append(field.name)
    return names


def _parse(argv) -> config_lib.TrainConfig:
    fv = flags.FlagValues()
    config_lib.define_flags(flag_values=fv)
    fv(["prog", *argv])
    return config_lib.from_flags(fv)


def test_default_flags_give_the_default_config():
    assert _parse([]) == config_lib.TrainConfig()


def test_flagfile_round_trips_every_field(tmp_path):
    config = _parse(["--batch_size=8", "--learning_rate=0.00123", "--epochs=0.3",
                     "--model=dnn_mtl", "--preset=tiny", "--model_override=dropout=0.25",
                     "--model_override=hidden_dims=[8, 4]", "--num_price_ranges=3",
                     "--history_length=7", "--eval_fraction=0.25", "--strategy=mirrored",
                     "--nocache_dataset", "--freeze_encoder", "--export_name=shop",
                     "--weight_decay=0.5", "--eval_batch_size=64", "--lazy_table_updates=false"])
    assert config.model_overrides == {"dropout": 0.25, "hidden_dims": [8, 4]}
    assert config.label_config.num_price_ranges == 3 and config.weight_decay == 0.5
    assert config.cache_dataset is False and config.eval_batch_size == 64
    path = config_lib.write_flagfile(str(tmp_path), config)
    assert _parse([f"--flagfile={path}"]) == config
    # Every field is in the file, None ones excepted.
    text = open(path).read()
    for name in _field_names():
        if name not in ("data_dir", "tfds_dir", "model_dir", "export_base", "init_checkpoint",
                        "warm_start_from", "train_start"):
            assert f"--{name}=" in text, name


def test_helpfull_lists_every_config_field_once_with_its_default():
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "trainers.multitask", "--helpfull"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300).stdout
    section = out[out.index("trainers.core.config:"):]
    section = section[:section.index("\n\n")] if "\n\n" in section else section
    base = config_lib.TrainConfig()
    for name in _field_names():
        pattern = rf"^\s+--(\[no\])?{name}:"
        assert len(re.findall(pattern, out, re.M)) == 1, name
        assert re.search(pattern, section, re.M), name
    for name in ("batch_size", "learning_rate", "weight_decay", "eval_batch_size"):
        text = section[section.index(f"--{name}:"):]
        assert f"(default: '{getattr(base, name)}')" in text.split("--", 2)[1], name
    assert "--text_encoder" not in out  # a family's key goes through --model_override


def test_bad_flag_values_fail_before_anything_is_created(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    for bad, message in (("--batch_size=0", "--batch_size must be > 0"),
                         ("--steps=-5", "--steps must be >= 0"),
                         ("--labels_fraction=2", "--labels_fraction must be in (0, 1]"),
                         ("--data_dir=/no/such/folder", "--data_dir /no/such/folder: not a "
                          "directory")):
        model_dir = tmp_path / bad.strip("-").replace("=", "_")
        p = subprocess.run([sys.executable, "-m", "trainers.multitask", bad,
                            f"--model_dir={model_dir}"],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert p.returncode == 2 and message in p.stderr, (bad, p.stderr[-2000:])
        assert "Traceback" not in p.stderr
        assert not model_dir.exists()
    # A model_dir under a file, or a file itself: one line naming it, no traceback.
    afile = tmp_path / "afile"
    afile.write_text("x")
    for model_dir, message in ((afile / "run", "is a file, not a folder"),
                               (afile, "is a file; expected a folder")):
        p = subprocess.run([sys.executable, "-m", "trainers.multitask",
                            f"--model_dir={model_dir}"],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert p.returncode == 2 and message in p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr


@pytest.mark.parametrize("old", [{"num_price_buckets": 5}])
def test_label_configs_written_before_the_rename_still_load(old):
    label_config = config_lib.labels_lib.LabelConfig.from_dict(old)
    assert label_config.num_price_ranges == 5
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bogus'\]"):
        config_lib.labels_lib.LabelConfig.from_dict({"bogus": 1})


def test_entry_points_start_without_tensorflow_start_up_lines():
    """`zoo.quiet.start()` hides the lines TensorFlow prints before absl's logging starts
    (TF_CPP_MIN_LOG_LEVEL does not reach them); ECOM_ZOO_TF_LOGS=1 shows them again."""
    from helpers import REPO, subprocess_env
    code = ("from zoo import quiet; quiet.start(); import tensorflow as tf; "
            "print(int(tf.constant(1) + 1))")

    def stderr_of(**env):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=REPO, env={**subprocess_env(), **env}, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr[-2000:]
        return proc.stderr

    loud = stderr_of(ECOM_ZOO_TF_LOGS="1")
    assert "InitializeLog" in loud or "oneDNN" in loud or "cuda" in loud.lower(), loud
    assert stderr_of().strip() == ""
