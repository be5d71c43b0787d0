"""Deployable artefacts and their runtimes: ONNX (Runtime) export, packed-bit binary kernels."""
