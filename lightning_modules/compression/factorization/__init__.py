"""Factorisation: low-rank approximation of trained layers (truncated SVD, Tucker-2)."""
