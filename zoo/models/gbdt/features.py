"""The tree's features are the log's standard features (`zoo.data.log_features`): the same
code feeds the neural models' context features, so the yardstick and the models it judges
cannot disagree about what "the user's clicks on this category so far" means."""

from zoo.data.log_features import (  # noqa: F401  (the family's API)
    CATEGORICAL, CTR_PRIOR_STRENGTH, NAMES, Before, build, matrix)
