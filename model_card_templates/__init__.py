"""Jinja templates of the model cards hf_distill writes; installed as `hf_distill.model_card_templates`."""
