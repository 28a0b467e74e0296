"""LLM dataset formats (TRL's conversational, prompt-completion, prompt-only, text and tokenized rows) as tokenized
rows for a causal-LM student, with the prompt as the leading run of `-100` labels."""

from .formats import FORMATS, detect_format, tokenize_for_distillation

__all__ = ["FORMATS", "detect_format", "tokenize_for_distillation"]
