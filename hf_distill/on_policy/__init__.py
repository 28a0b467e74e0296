"""On-policy distillation (GKD): which optimizer steps generate (`schedule`), what the generation is asked to do and
whether this run can (`settings`), the prompts of a batch (`prompts`), the student's or the teacher's completions
(`generation`), the batch both models are then scored on (`scored_batch`), the step hook the trainer calls
(`steps`), the evaluation metric (`evaluation`) and the counters and timers of the logs (`metrics`)."""
