"""Corpus-mode training: when a collection's job is submitted (policy) and the submission run."""
