"""Gradient-accumulation normalisation: (batch 4, GA 1) == (batch 2, GA 2) == (batch 1, GA 4) on padded batches of
different lengths, with and without labels, and all-ignored windows give zero loss and zero gradients."""

import pytest
import torch
from datasets import Dataset
from tiny_models import PARITY_ARGS, collate, examples, llama

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.losses import KDObjective, Positions, objective_sums


def _train(tmp_path, rows, batch, accumulation, **overrides):
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    args = DistillationConfig(
        output_dir=str(tmp_path / f"b{batch}ga{accumulation}"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        **PARITY_ARGS,
        use_cpu=True,
        data_seed=0,
        **overrides,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows), data_collator=collate
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return student.state_dict(), losses


@pytest.mark.parametrize(
    "overrides, drop_labels",
    [({"ce_weight": 0.5, "kd_temperature": 2.0}, False), ({"kd_loss": "jsd"}, True)],
    ids=["kd+ce with labels", "kd only without labels"],
)
def test_accumulation_split_does_not_change_the_step(tmp_path, overrides, drop_labels):
    rows = examples("causal_lm", 8)  # lengths 4..10 padded to 10: token counts differ between micro-batches
    if drop_labels:
        rows = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
    reference, reference_losses = _train(tmp_path, rows, 4, 1, **overrides)
    for batch, accumulation in [(2, 2), (1, 4)]:
        params, losses = _train(tmp_path, rows, batch, accumulation, **overrides)
        for name, value in reference.items():
            torch.testing.assert_close(params[name], value, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference_losses), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl"])
def test_all_ignored_labels_give_zero_loss_and_zero_gradients(loss):
    student_logits = torch.randn(2, 5, 11, requires_grad=True)
    teacher_logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), -100)
    objective = KDObjective(kd_loss=loss, ce_weight=0.5)
    sums = objective_sums(objective, student_logits, teacher_logits, Positions(labels, shift_labels=True))
    from hf_distill.losses import normalize_token_sum

    loss_value = normalize_token_sum(sums.total, sums.num_targets)
    loss_value.backward()
    assert loss_value.item() == 0.0 and sums.num_targets.item() == 0
    assert torch.equal(student_logits.grad, torch.zeros_like(student_logits))
