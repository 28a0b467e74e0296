"""What `DistillationTrainer` adds around `transformers.Trainer`'s loop: the output-folder guard, the NaN/inf stop,
the running distillation metrics, when the memory-efficient loss runs, and which checkpoint a resume reads."""
