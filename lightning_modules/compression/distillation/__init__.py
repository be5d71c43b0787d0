"""Distillation (the documents, II): a student trained on a frozen teacher's soft targets (Hinton et al. 2015)."""
