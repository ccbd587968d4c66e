"""Relevance: calibrated scores, cut-offs, result order and the query language."""
