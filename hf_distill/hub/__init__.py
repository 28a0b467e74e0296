"""Publishing a distilled student: its lineage record, the teacher's license duties, the model card, the push to the
Hub (and the secret scan before it), reading a lineage back, and the teacher-vs-student comparison the card reports."""
