"""The `hf-distill` command line: the entry point and its commands (`train`, `cache-teacher`, `generate`, `lineage`),
the YAML recipe they read, the data they build and the report they print. Composition roots only: everything they
run lives in the library below."""

from .main import main

__all__ = ["main"]
