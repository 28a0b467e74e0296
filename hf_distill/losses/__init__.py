"""Pure loss functions: torch in, torch out. Nothing here knows about models, trainers or configs."""

from .chunked import HeadInput, LinearHead, chunked_objective_sums, chunked_sparse_objective_sums
from .cross_tokenizer import (
    CROSS_TOKENIZER_METHODS,
    AlignedTeacher,
    ChunkLayout,
    ChunkSelection,
    aligned_objective_sums,
    coarsen,
    lazy_first_rows,
    prediction_mask,
    select_chunks,
    teacher_targets,
    topk_teacher_targets,
)
from .distillation import distillation_sums
from .divergences import DIVERGENCES, per_token_divergence
from .objective import KDObjective, ObjectiveSums, objective_sums
from .reduction import IGNORE_INDEX, Positions, count_targets, normalize_token_sum, select_targets
from .sparse import TAIL_MODES, TopK, sparse_log_probs, sparse_objective_sums, sparse_row_sums

__all__ = [
    "CROSS_TOKENIZER_METHODS",
    "DIVERGENCES",
    "IGNORE_INDEX",
    "AlignedTeacher",
    "ChunkLayout",
    "ChunkSelection",
    "HeadInput",
    "KDObjective",
    "LinearHead",
    "ObjectiveSums",
    "Positions",
    "TAIL_MODES",
    "TopK",
    "aligned_objective_sums",
    "chunked_objective_sums",
    "chunked_sparse_objective_sums",
    "coarsen",
    "lazy_first_rows",
    "count_targets",
    "distillation_sums",
    "normalize_token_sum",
    "objective_sums",
    "per_token_divergence",
    "prediction_mask",
    "select_chunks",
    "select_targets",
    "sparse_log_probs",
    "sparse_objective_sums",
    "sparse_row_sums",
    "teacher_targets",
    "topk_teacher_targets",
]
