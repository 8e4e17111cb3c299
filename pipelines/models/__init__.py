"""Model files: building the small demo models and converting checkpoints to ONNX.

``demo`` and ``convert`` import torch, diffusers and transformers; they are used by the worker
and the ``onnx-web convert`` command, never by the api.
"""
