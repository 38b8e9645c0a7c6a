import os
import sys

# Tests import the hand-written fixtures as a plain module.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import pytest  # noqa: E402


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
