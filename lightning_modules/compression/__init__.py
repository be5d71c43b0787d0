"""Compression methods and their parts. Pure torch: nothing here imports Lightning."""
from .method import FullPrecision, Method

__all__ = ["Method", "FullPrecision"]
