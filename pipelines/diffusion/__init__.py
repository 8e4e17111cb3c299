"""Stable Diffusion on ONNX Runtime: the shared model code, one module per task, schedulers, prompts."""
