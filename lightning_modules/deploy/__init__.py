"""Deployable artefacts and their runtimes: ONNX (Runtime, integer kernels), packed-bit kernels."""
