"""The one entry point the trainer calls: the objective's sums for whatever kinds of student and teacher outputs a
batch has (logits, hidden states with their head, or a cached top-k)."""

from __future__ import annotations

import torch

from .chunked import HeadInput, chunked_objective_sums, chunked_sparse_objective_sums
from .cross_tokenizer import AlignedTeacher, aligned_objective_sums
from .objective import KDObjective, ObjectiveSums, objective_sums
from .reduction import Positions
from .sparse import TopK, sparse_objective_sums


def _kind(value: object) -> str:
    return "logits" if torch.is_tensor(value) else type(value).__name__


def distillation_sums(
    objective: KDObjective,
    student: torch.Tensor | HeadInput,
    teacher: torch.Tensor | HeadInput | TopK | AlignedTeacher,
    positions: Positions,
    *,
    chunk_size: int = 0,
    vocab_size: int | None = None,
) -> ObjectiveSums:
    """The objective's sums for one micro-batch, dispatched on what the two models produced.

    | student               | teacher          | computed by                                   |
    |-----------------------|------------------|-----------------------------------------------|
    | logits                | logits           | `objective_sums`                              |
    | `HeadInput`           | `HeadInput`      | `chunked_objective_sums`                      |
    | logits                | `TopK`           | `sparse_objective_sums`                       |
    | `HeadInput`           | `TopK`           | `chunked_sparse_objective_sums`               |
    | logits or `HeadInput` | `AlignedTeacher` | `aligned_objective_sums` (another tokenizer)  |

    Args:
        objective (`KDObjective`): what to compute.
        student (`torch.Tensor` of shape `(B, T, V_s)` or `(B, V_s)`, or `HeadInput`): the student's logits, or its
            hidden states `(B, T, H_s [+ r])` and LM head; gradients flow.
        teacher (`torch.Tensor` of shape `(B, T, V_t)` or `(B, V_t)`, `HeadInput`, `TopK` or `AlignedTeacher`): the
            teacher's logits, its hidden states `(B, T, H_t [+ r_t])` and head, its cached top-k `(B, T, k)`, or its
            targets on the chunks aligned with a student of another tokenizer.
        positions (`Positions`): which positions count and how the labels line up.
        chunk_size (`int`, *optional*, defaults to 0): positions per chunk of the hidden-state paths (must be >= 1
            there); unused with logits.
        vocab_size (`int`, *optional*): compare dense distributions over their first `vocab_size` entries only;
            unused with a `TopK` teacher (its ids index the student's vocabulary) and with an `AlignedTeacher` (its
            vocabulary mapping covers every head row).

    Returns:
        `ObjectiveSums`.

    Raises:
        `TypeError`: for a pair of kinds none of the paths takes, naming both.
    """
    student_logits = torch.is_tensor(student)
    if isinstance(teacher, AlignedTeacher) and (student_logits or isinstance(student, HeadInput)):
        return aligned_objective_sums(objective, student, teacher, positions, chunk_size)
    if student_logits and torch.is_tensor(teacher):
        return objective_sums(objective, student, teacher, positions, vocab_size=vocab_size)
    if isinstance(student, HeadInput) and isinstance(teacher, HeadInput):
        return chunked_objective_sums(objective, student, teacher, positions, chunk_size, vocab_size=vocab_size)
    if student_logits and isinstance(teacher, TopK):
        return sparse_objective_sums(objective, student, teacher, positions)
    if isinstance(student, HeadInput) and isinstance(teacher, TopK):
        return chunked_sparse_objective_sums(objective, student, teacher, positions, chunk_size)
    raise TypeError(
        f"distillation_sums got a student of kind {_kind(student)} and a teacher of kind {_kind(teacher)}; the "
        "student must be logits or a HeadInput, the teacher logits, a HeadInput, a TopK or an AlignedTeacher, and a "
        "logits student cannot meet a HeadInput teacher (project the teacher's logits instead)."
    )
