"""The on-disk layout of a converted model folder: file names and content hashes.

Every module that reads or writes model folders (the converter, the GPU optimizer, the demo
builder, the pipelines) takes these names from here, so none of them imports another for a constant.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: The graph of one component (``unet/model.onnx``, ``vae_decoder/model.onnx``, ...).
ONNX_FILE = "model.onnx"
#: Name of the single external-data file of a component over protobuf's 2 GB limit.
EXTERNAL_DATA_FILE = "weights.pb"
#: The model's short content hash, first line (contract §7.3).
HASH_FILE = "hash.txt"
HASH_LENGTH = 10
#: A models folder's extras document (labels, networks, strings; contract §11.2).
EXTRAS_FILE = "extras.json"
#: Written next to ``model_index.json`` by ``pipelines.gpu.optimize``: the folder's graphs are fused
#: fp16 for CUDA workers (its presence makes a published model the ``cuda`` variant).
GPU_MARKER = "gpu.json"


def hash_component(folder: Path) -> str:
    """Short upper-case SHA-256 over a component's graph and external weights, in name order."""
    digest = hashlib.sha256()
    for name in (ONNX_FILE, EXTERNAL_DATA_FILE):
        if (folder / name).is_file():
            with (folder / name).open("rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:HASH_LENGTH].upper()


def read_model_hash(model_dir: Path) -> str:
    """The first line of ``hash.txt`` in a model folder, or ``"unknown"`` (contract §7.3)."""
    try:
        lines = (model_dir / HASH_FILE).read_text().splitlines()
    except OSError:
        return "unknown"
    return lines[0].strip() if lines and lines[0].strip() else "unknown"
