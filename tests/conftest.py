import os
import sys

# Tests import the hand-written fixtures as a plain module.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One thread per TensorFlow op, in the workers and the trainers and servers they start
# (inherited): the tiny models gain little from splitting an op, and two workers with
# their subprocesses share two cores, so every op pool beyond one thread competes with
# the other processes (the figures: BUILD_NOTES, "Suite time"). The ops of a step still
# run side by side (the inter-op pool is left as it is: collectives and servers need it).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")


import pytest  # noqa: E402

# The files that take longest, longest first (measured in the fresh-clone runs recorded in
# BUILD_NOTES, "Suite time"). `make test` hands whole files to two workers in collection
# order (`--dist loadfile --no-loadscope-reorder`); xdist's own order (most tests first)
# left a five-minute file of three tests for the end while the other worker sat idle.
SLOWEST_FILES = ("test_cluster.py", "test_multitask.py", "test_experiment.py",
                 "test_continual.py", "test_recommend.py", "test_export.py",
                 "test_warm_start.py", "test_explain_planted.py", "test_analyze.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture(scope="session")
def shop(tmp_path_factory):
    """A small simulated shop, prepared once (contract folder, TFDS dir)."""
    import helpers
    return helpers.make_shop(tmp_path_factory)


@pytest.fixture(scope="session")
def trained(shop, tmp_path_factory):
    """(TrainConfig, result) of a tiny model trained 300 steps on the shop."""
    import helpers
    return helpers.train_tiny(shop, tmp_path_factory)
