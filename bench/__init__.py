"""Benchmarks: the GPU path against diffusers' PyTorch pipelines (``onnx-web bench gpu``)."""
