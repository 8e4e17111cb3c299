"""One copy of a model's weights for all of its ONNX Runtime sessions.

A CUDA worker runs each model component on several sessions: a dynamic one, and one per warmed shape
(static shapes are what CUDA graphs need). Each session loads the model's initializers into its own
device memory unless it is handed them: ``SessionOptions.add_initializer`` takes an ``OrtValue``
over memory the caller owns, and ONNX Runtime uses it in place in any session that plans that
initializer on the same device (``session_state_utils.cc``, ``use_user_supplied_initializer``).
An initializer that a session plans elsewhere, or that its graph optimizations replace, is loaded
by that session as before: sharing never changes what a session computes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Initializers smaller than this stay with each session: sharing them saves nothing worth a handle.
SHARED_WEIGHT_BYTES = 1 << 16

#: Element types whose arrays go through DLPack as they are (ONNX's float16 and float32, integers).
_SHAREABLE = frozenset(np.dtype(name) for name in ("float16", "float32", "int32", "int64", "int8", "uint8"))


def initializer_bytes(tensor: Any) -> int:
    """Size in bytes of an ONNX ``TensorProto``, read off its type and shape (no data loaded)."""
    from onnx import helper

    return math.prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def large_initializers(path: Path, min_bytes: int = SHARED_WEIGHT_BYTES) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, array)`` of each initializer of the model at ``path`` with at least ``min_bytes``,
    loaded one at a time (a model's external data is never all in memory at once)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if initializer_bytes(tensor) < min_bytes:
            continue
        array = numpy_helper.to_array(tensor, base_dir=str(path.parent))
        if array.dtype not in _SHAREABLE:
            continue
        # Writable: DLPack (and torch) take no read-only buffers; an array over the proto's bytes is one.
        yield tensor.name, np.require(array, requirements=["C", "W"])


class SharedWeights:
    """The large initializers of one ONNX model, placed once on a device for all its sessions.

    ``place`` turns a host array into a tensor on the device that supports DLPack (a torch CUDA
    tensor; a numpy array stays on the host). Each becomes an ``OrtValue`` over that tensor's memory,
    without a copy; ``add_to`` hands them all to a session's options. The tensors live as long as
    any session or this object holds them.
    """

    def __init__(
        self,
        path: Path,
        place: Callable[[np.ndarray], Any],
        min_bytes: int | None = None,
    ) -> None:
        """``min_bytes`` defaults to ``SHARED_WEIGHT_BYTES``, read at each call."""
        import onnxruntime

        if min_bytes is None:
            min_bytes = SHARED_WEIGHT_BYTES

        #: The device tensors by initializer name.
        self.tensors: dict[str, Any] = {}
        self._values: dict[str, Any] = {}
        self.nbytes = 0
        for name, array in large_initializers(path, min_bytes):
            tensor = place(array)
            self.tensors[name] = tensor
            self._values[name] = onnxruntime.OrtValue.from_dlpack(tensor)
            self.nbytes += array.nbytes
        logger.info("%s: %d initializers (%d MiB) shared", path, len(self.tensors), self.nbytes >> 20)

    def add_to(self, options: Any) -> Any:
        """``options`` (``onnxruntime.SessionOptions``) with every shared initializer added."""
        for name, value in self._values.items():
            options.add_initializer(name, value)
        return options
