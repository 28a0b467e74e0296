"""hf_distill: knowledge distillation as a one-line change for `transformers.Trainer` users."""

from .config import DistillationConfig
from .teacher import TeacherOutput
from .trainer import DistillationTrainer

__version__ = "0.1.0"

__all__ = ["DistillationConfig", "DistillationTrainer", "TeacherOutput", "__version__"]
