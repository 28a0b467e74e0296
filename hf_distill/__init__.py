"""hf_distill: knowledge distillation as a one-line change for `transformers.Trainer` users."""

from .cache_writer import cache_teacher
from .config import DistillationConfig
from .licenses import LicensePolicyError
from .lineage import Lineage, LineageError
from .pull import LineageNotFoundError, PulledLineage, read_lineage
from .seq2seq import Seq2SeqDistillationConfig, Seq2SeqDistillationTrainer
from .teacher import TeacherOutput
from .teacher_cache import TeacherCache, load_teacher_cache
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
    "Seq2SeqDistillationConfig",
    "Seq2SeqDistillationTrainer",
    "TeacherCache",
    "TeacherOutput",
    "__version__",
    "cache_teacher",
    "load_teacher_cache",
    "read_lineage",
]
