"""Downstream tasks: each takes AnnData (+ embeddings) and returns AnnData."""
