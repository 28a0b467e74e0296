"""Distillation between a teacher and a student whose tokenizers differ: byte tables, shared vocabulary, alignment."""
