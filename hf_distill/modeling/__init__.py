"""What hf_distill needs to know about a model, teacher or student alike: its head kind and label shift, its LM head
and final hidden states (for the chunked loss), its adapters, its forward's arguments, what the lineage records of it
(architecture, parameters, adapter), and a student initialised from a teacher's layers."""
