"""Task metrics for `compute_metrics`, computed by `evaluate` modules that ship with hf_distill.

`evaluate.load("accuracy")` downloads the metric's script from the Hub, which a machine without network cannot do;
these modules are `evaluate.Metric`s defined here (same inputs, same output keys as the Hub's `accuracy`), so
`compute_metrics` works offline and in multi-process evaluation. Perplexity is computed from the label tokens'
log-probabilities, which `label_log_probs` extracts from the logits batch by batch
(`preprocess_logits_for_metrics`), so the evaluation never holds a `(examples, seq, vocab)` array.

    trainer = DistillationTrainer(..., compute_metrics=perplexity_metrics, preprocess_logits_for_metrics=label_log_probs)
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import evaluate
import numpy as np
import torch

IGNORE_INDEX = -100


class Accuracy(evaluate.Metric):
    """Share of predictions equal to their reference (the Hub's `accuracy`, without sample weights)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Share of predictions equal to their reference.",
            citation="",
            inputs_description="predictions (`list[int]`): predicted labels; references (`list[int]`): true labels.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        if not references:
            raise ValueError("accuracy needs at least one reference; the evaluation set gave none (all -100?).")
        return {"accuracy": float(np.mean(np.asarray(predictions) == np.asarray(references)))}


class Perplexity(evaluate.Metric):
    """exp(total negative log-likelihood / total tokens): token-weighted, whatever the sequence lengths."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Perplexity of a language model on the label tokens, weighted by token.",
            citation="",
            inputs_description=(
                "negative_log_likelihoods (`list[float]`): per sequence, the summed -log p of its label tokens; "
                "token_counts (`list[int]`): per sequence, how many label tokens that sum covers."
            ),
            features=datasets.Features(
                {"negative_log_likelihoods": datasets.Value("float64"), "token_counts": datasets.Value("int64")}
            ),
        )

    def _compute(self, negative_log_likelihoods: list[float], token_counts: list[int]) -> dict[str, float]:
        tokens = int(np.sum(token_counts))
        if tokens == 0:
            raise ValueError("perplexity needs at least one label token; every label in the evaluation set is -100.")
        return {"perplexity": math.exp(float(np.sum(negative_log_likelihoods)) / tokens)}


def _first(predictions: Any) -> Any:
    """Models may return more than logits (hidden states, ...); the logits come first."""
    return predictions[0] if isinstance(predictions, (tuple, list)) else predictions


def accuracy_metrics(prediction: Any) -> dict[str, float]:
    """`compute_metrics` for classification: argmax of the logits against the labels, positions labelled -100
    skipped (so token classification works too).

    Args:
        prediction (`EvalPrediction`): `predictions` `(examples, num_labels)` or `(examples, seq, num_labels)`
            logits, `label_ids` of the same leading shape.
    """
    predicted = np.asarray(_first(prediction.predictions)).argmax(-1).reshape(-1)
    references = np.asarray(prediction.label_ids).reshape(-1)
    keep = references != IGNORE_INDEX
    return Accuracy(keep_in_memory=True).compute(predictions=predicted[keep], references=references[keep])


def label_log_probs(logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
    """`preprocess_logits_for_metrics` for causal language models: log p(label at t | tokens before t).

    Args:
        logits (`torch.Tensor` of shape `(batch, seq, vocab)`): position t predicts token t + 1.
        labels (`torch.Tensor` of shape `(batch, seq)`): unshifted, -100 where no loss is taken.

    Returns:
        `torch.Tensor` of shape `(batch, seq)`, float32, aligned with `labels`; position 0 (nothing predicts it) and
        positions labelled -100 hold 0.
    """
    logits = _first(logits)
    targets = labels[:, 1:]
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (batch, seq - 1)
    picked = picked.masked_fill(targets == IGNORE_INDEX, 0.0)
    return torch.cat([picked.new_zeros(picked.shape[0], 1), picked], dim=1)


def perplexity_metrics(prediction: Any) -> dict[str, float]:
    """`compute_metrics` for causal language models, given `label_log_probs` as `preprocess_logits_for_metrics`.

    Args:
        prediction (`EvalPrediction`): `predictions` `(examples, seq)` label log-probs, `label_ids` `(examples, seq)`.
    """
    log_probs = np.asarray(_first(prediction.predictions), dtype=np.float64)
    labels = np.asarray(prediction.label_ids)
    if log_probs.shape != labels.shape:
        raise ValueError(
            f"perplexity_metrics got predictions of shape {log_probs.shape} for labels of shape {labels.shape}: pass "
            f"preprocess_logits_for_metrics=label_log_probs to the trainer so predictions are label log-probs."
        )
    counted = labels != IGNORE_INDEX
    counted[:, 0] = False  # the first token is never predicted
    return Perplexity(keep_in_memory=True).compute(
        negative_log_likelihoods=-(log_probs * counted).sum(-1), token_counts=counted.sum(-1)
    )
