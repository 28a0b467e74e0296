"""hf_distill: knowledge distillation as a one-line change for `transformers.Trainer` users."""

from .config import DistillationConfig
from .hub.licenses import LicensePolicyError
from .hub.lineage import Lineage, LineageError
from .hub.pull import LineageNotFoundError, PulledLineage, read_lineage
from .offline.cache import TeacherCache, load_teacher_cache
from .offline.writer import cache_teacher
from .seq2seq import Seq2SeqDistillationConfig, Seq2SeqDistillationTrainer
from .teacher.model import TeacherOutput
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
