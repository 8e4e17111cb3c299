"""The NVIDIA GPU path: fused fp16 graphs, CUDA sessions with IO binding and CUDA graphs, batching.

- ``optimize``: ONNX Runtime's Stable Diffusion fusions and fp16 conversion of an exported folder
  (``onnx-web convert diffusers --optimize gpu``).
- ``runtime``: CUDA execution-provider sessions bound to torch CUDA tensors, one CUDA graph per
  warmed static shape (bucket), warm-up, and the per-worker cache of models on the GPU.
- ``batch``: txt2img for several compatible jobs as one UNet batch, each job with its own
  prompt, seed, guidance, progress and images; on the GPU or, for tests, on the CPU.
"""
