"""Embedding: engines, batch planning (pure), the pipeline, the overlapped writer, search."""
