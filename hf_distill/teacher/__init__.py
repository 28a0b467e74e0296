"""The teacher: one interface the trainer calls (`base.Teacher`: its targets for the loss and the facts the rest of the
code asks about), its live kinds (`live.LiveTeacher`, `shared_base.SharedBaseTeacher`; the cache is
`hf_distill.offline.teacher.CachedTeacher`), and how a teacher model is loaded, checked against the student
(vocabulary, label order), frozen, cast, placed and run."""
