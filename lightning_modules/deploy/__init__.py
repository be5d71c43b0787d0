"""Deployable artefacts and their runtimes (the deploy step, deploy.py): ONNX export run by ONNX
Runtime with its integer kernels (onnx_export.py), packed-bit binary kernels (binary.py)."""
