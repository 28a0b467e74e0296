"""Which kind of optimizer step runs: off-policy (the dataset's text), on-policy (the student's completions) or
teacher-generated (the teacher's completions, sequence-level KD).

A smooth weighted round-robin (nginx's): before each step every kind's credit grows by its share, the kind with the
largest credit runs (ties: off-policy, then on-policy, then teacher) and its credit drops by 1. So the kinds are
spread as evenly as their shares allow (0.5 on-policy: off, on, off, on, ...), with no random numbers: every process
and every micro-batch of a step takes the same decision, and a resumed run continues the same sequence.
"""

from __future__ import annotations

from fractions import Fraction

OFF_POLICY = "off_policy"
ON_POLICY = "on_policy"
TEACHER_GENERATED = "teacher"
KINDS = (OFF_POLICY, ON_POLICY, TEACHER_GENERATED)  # also the tie order

# (on_fraction, teacher_fraction) -> the kinds of steps 0, 1, 2, ... computed so far, and the credits after them.
_MEMO: dict[tuple[float, float], tuple[list[str], list[Fraction]]] = {}


def step_kind(step: int, on_fraction: float, teacher_fraction: float = 0.0) -> str:
    """The kind of optimizer step `step` (0-based, `TrainerState.global_step` before the step runs).

    Args:
        step (`int`): the optimizer step, counted from 0.
        on_fraction (`float`): `on_policy_fraction`, in [0, 1].
        teacher_fraction (`float`, *optional*, defaults to 0): `teacher_generation_fraction`, in [0, 1 - on_fraction].

    Returns:
        `str`: one of `KINDS`.

    Example:
        ```python
        >>> [step_kind(s, 0.5) for s in range(4)]
        ['off_policy', 'on_policy', 'off_policy', 'on_policy']
        ```
    """
    if step < 0:
        raise ValueError(f"step={step} must be >= 0.")
    if on_fraction == 0 and teacher_fraction == 0:
        return OFF_POLICY
    # Exact rationals (the floats' own values): the credits never drift, so a schedule never depends on how far it
    # was computed before.
    shares = [Fraction(on_fraction), Fraction(teacher_fraction)]
    shares.insert(0, 1 - sum(shares))
    kinds, credits = _MEMO.setdefault((on_fraction, teacher_fraction), ([], [Fraction(0)] * len(KINDS)))
    while len(kinds) <= step:
        for i, share in enumerate(shares):
            credits[i] += share
        best = max(range(len(KINDS)), key=lambda i: (credits[i], -i))  # the largest credit, ties to the first kind
        credits[best] -= 1
        kinds.append(KINDS[best])
    return kinds[step]
