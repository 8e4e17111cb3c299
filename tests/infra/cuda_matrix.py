"""Which CUDA and cuDNN each pinned GPU wheel is built for, and what a CUDA base image provides.

Facts, each with where it was read, so the image test can say "this base cannot run that wheel"
without a GPU or a registry. A version missing from a table fails the test: bumping a pin means
reading its build facts and adding a row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class CudaBuild:
    """The CUDA toolkit (major, minor) and cuDNN major a wheel was built against."""

    cuda: tuple[int, int]
    cudnn_major: int
    source: str


#: onnxruntime-gpu wheels on PyPI. ONNX Runtime's "CUDA Execution Provider requirements" page: a
#: build for CUDA X.y runs on any X.z (NVIDIA's minor version compatibility), and cuDNN majors are
#: not interchangeable (8.x builds do not load 9.x and vice versa).
ONNXRUNTIME_GPU: dict[str, CudaBuild] = {
    "1.31.1": CudaBuild(
        cuda=(13, 0),
        cudnn_major=9,
        source=(
            "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl: "
            "onnxruntime/capi/build_and_package_info.py cuda_version = '13.0'; METADATA extras "
            "nvidia-cuda-runtime~=13.0, nvidia-cudnn-cu13~=9.0"
        ),
    ),
}

#: torch wheels on PyPI for Linux x86_64 (what `pip install '.[worker]'` gets in the CUDA image).
#: The CUDA worker hands torch CUDA tensors to ONNX Runtime through IO binding, in one process.
TORCH: dict[str, CudaBuild] = {
    "2.13.0": CudaBuild(
        cuda=(13, 0),
        cudnn_major=9,
        source=(
            "torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl METADATA: "
            "cuda-toolkit[...]==13.0.3, nvidia-cudnn-cu13==9.20.0.48"
        ),
    ),
}

#: NVIDIA's CUDA image tags: VERSION-[cudnnN-|cudnn-]{base,runtime,devel}-OS. Since CUDA 12.4 the
#: cuDNN flavour is tagged plain `cudnn` and carries cuDNN 9 (earlier tags name the major, `cudnn8`).
CUDA_TAG = re.compile(
    r"^(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)-(?:cudnn(?P<cudnn>\d*)-)?(?P<flavour>base|runtime|devel)-"
    r"(?P<os>[a-z]+\d+(?:\.\d+)?)$"
)
PLAIN_CUDNN_SINCE = (12, 4)
PLAIN_CUDNN_MAJOR = 9


@dataclass(frozen=True)
class CudaImage:
    """What an nvidia/cuda image provides: the CUDA toolkit (major, minor) and its cuDNN major, if any."""

    cuda: tuple[int, int]
    cudnn_major: int | None


def cuda_image(tag: str) -> CudaImage:
    """Read an nvidia/cuda tag such as ``13.0.3-cudnn-runtime-ubuntu24.04``; ValueError if it is not one."""
    found = CUDA_TAG.match(tag)
    if found is None:
        raise ValueError(f"not an nvidia/cuda tag: {tag!r}")
    cuda = (int(found["major"]), int(found["minor"]))
    cudnn = found["cudnn"]
    if cudnn is None:
        return CudaImage(cuda, None)
    if cudnn:
        return CudaImage(cuda, int(cudnn))
    if cuda < PLAIN_CUDNN_SINCE:
        raise ValueError(f"{tag!r}: a plain `cudnn` tag before CUDA 12.4 names no cuDNN major")
    return CudaImage(cuda, PLAIN_CUDNN_MAJOR)


def mismatch(image: CudaImage, wheel: str, build: CudaBuild) -> str | None:
    """Why ``wheel`` (built as ``build``) cannot use the CUDA of ``image``, or None when it can."""
    have = f"CUDA {image.cuda[0]}.{image.cuda[1]}"
    if image.cuda[0] != build.cuda[0]:
        return f"{wheel} is built for CUDA {build.cuda[0]}.x, the base image has {have}"
    if image.cuda < build.cuda:
        return (
            f"{wheel} is built for CUDA {build.cuda[0]}.{build.cuda[1]}, newer than the base image's {have}"
        )
    if image.cudnn_major != build.cudnn_major:
        return f"{wheel} needs cuDNN {build.cudnn_major}, the base image has cuDNN {image.cudnn_major}"
    return None
