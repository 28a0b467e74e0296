"""Pure loss functions: torch in, torch out. Nothing here knows about models, trainers or configs."""

from .composite import KDObjective, ObjectiveSums, objective_sums
from .divergences import DIVERGENCES, per_token_divergence
from .reduction import IGNORE_INDEX, count_targets, normalize_token_sum, select_targets
from .sparse import TAIL_MODES, sparse_log_probs, sparse_objective_sums, sparse_row_sums

__all__ = [
    "DIVERGENCES",
    "IGNORE_INDEX",
    "KDObjective",
    "ObjectiveSums",
    "TAIL_MODES",
    "count_targets",
    "normalize_token_sum",
    "objective_sums",
    "per_token_divergence",
    "select_targets",
    "sparse_log_probs",
    "sparse_objective_sums",
    "sparse_row_sums",
]
