"""The offline teacher: its top-k distributions cached once (format, writer, reader), its own generated responses for
sequence-level distillation, and the cache as a kind of `Teacher` (`CachedTeacher`; `CrossTokenizerCachedTeacher` for a
cache of the teacher's own tokens serving students of other tokenizers). Built on `hf_distill.teacher`; never imported
by it."""
