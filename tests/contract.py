"""Lists the contract fixes (``spec/contract.md``), written out once for the tests that check them.

Tests compare what the code serves against these literals, never against the code's own constants,
so a change to the code's list fails them.
"""

from __future__ import annotations

#: onnx-web's scheduler names, in its order (contract §5.7).
SCHEDULERS = [
    "ddim",
    "ddpm",
    "deis-multi",
    "dpm-multi",
    "dpm-sde",
    "dpm-single",
    "euler",
    "euler-a",
    "heun",
    "ipndm",
    "k-dpm-2-a",
    "k-dpm-2",
    "lcm",
    "lms-discrete",
    "pndm",
    "unipc-multi",
]

#: Contract §5.5: ``/api/settings/pipelines``, in onnx-web's order.
_PIPELINE_WORDS = (
    "controlnet img2img img2img-sdxl inpaint lpw panorama panorama-sdxl pix2pix txt2img-sdxl txt2img upscale"
)
PIPELINES = tuple(_PIPELINE_WORDS.split())
