"""Benchmarks: the GPU path against diffusers' PyTorch pipelines (``python -m bench.gpu``)."""
