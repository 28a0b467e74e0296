"""hf_distill: knowledge distillation as a one-line change for `transformers.Trainer` users."""

from .config import DistillationConfig
from .licenses import LicensePolicyError
from .lineage import Lineage, LineageError
from .pull import LineageNotFoundError, PulledLineage, read_lineage
from .teacher import TeacherOutput
from .trainer import DistillationTrainer

__version__ = "0.1.0"

__all__ = [
    "DistillationConfig",
    "DistillationTrainer",
    "LicensePolicyError",
    "Lineage",
    "LineageError",
    "LineageNotFoundError",
    "PulledLineage",
    "TeacherOutput",
    "__version__",
    "read_lineage",
]
