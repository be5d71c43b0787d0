"""Quantization (the documents, III): quantizers with straight-through gradients, quantized layers,
the methods that swap them in (BinaryConnect .. LQ-Nets, Polino et al., product quantization), packed files."""
