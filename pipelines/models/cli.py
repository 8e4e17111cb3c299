"""``onnx-web convert``: the command line of the demo builder and the converters."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipelines.imageops.annotators import ANNOTATOR_MODELS
from pipelines.models.controlnets import CONTROL_FOLDER, convert_controlnet_folder
from pipelines.models.convert import DEFAULT_OPSET, OPTIMIZE_CHOICES, convert_diffusers_folder
from pipelines.models.demo import build_demo_models
from pipelines.models.preview import PREVIEW_FOLDER, TAESD, TAESDXL, convert_preview_folder
from pipelines.text.convert import TEXT_FOLDER, convert_gpt2_folder


def add_convert_arguments(subparsers: Any) -> None:
    """Add ``convert demo`` and ``convert diffusers`` to the ``onnx-web`` command line."""
    convert = subparsers.add_parser("convert", help="build the demo models or convert a checkpoint to ONNX")
    kinds = convert.add_subparsers(dest="convert_kind", required=True)

    demo = kinds.add_parser(
        "demo", help="build the small random-weight demo models: every one `onnx-web run` builds"
    )
    demo.add_argument(
        "--models", type=Path, default=Path("models"), help="models folder (default: %(default)s)"
    )
    demo.add_argument("--force", action="store_true", help="rebuild models that already exist")

    diffusers_parser = kinds.add_parser(
        "diffusers",
        help="convert a local diffusers folder (hub ids cannot be fetched on these machines: download first)",
    )
    diffusers_parser.add_argument(
        "src", type=Path, help="local diffusers folder (unet/, vae/, text_encoder/, ...)"
    )
    diffusers_parser.add_argument("name", help="model folder name to create, e.g. stable-diffusion-onnx-v1-5")
    diffusers_parser.add_argument(
        "--models", type=Path, default=Path("models"), help="models folder (default: %(default)s)"
    )
    diffusers_parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)"
    )
    diffusers_parser.add_argument(
        "--optimize",
        choices=OPTIMIZE_CHOICES,
        default="none",
        help="gpu: fused fp16 graphs for CUDA workers (they do not run on CPU) (default: %(default)s)",
    )
    diffusers_parser.add_argument(
        "--workers", type=int, default=1, help="components optimized in parallel (default: %(default)s)"
    )
    diffusers_parser.add_argument(
        "--cnet", action="store_true", help="also export the UNet that ControlNets feed (pipeline controlnet)"
    )

    text = kinds.add_parser(
        "text", help="convert a local transformers GPT-2 folder (a promptgen model) to text/<name>"
    )
    text.add_argument(
        "src", type=Path, help="local GPT-2 folder (config.json, weights, vocab.json, merges.txt)"
    )
    text.add_argument("name", help="text model name to create, e.g. promptgen-lexart")
    text.add_argument(
        "--models", type=Path, default=Path("models"), help="models folder (default: %(default)s)"
    )
    text.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")

    control = kinds.add_parser(
        "controlnet",
        help="convert a local diffusers ControlNetModel folder (SD 1.x or SDXL) to control/<name>",
    )
    control.add_argument("src", type=Path, help="local diffusers ControlNet folder (config.json and weights)")
    control.add_argument("name", help="ControlNet name to create, e.g. canny")
    control.add_argument(
        "--models", type=Path, default=Path("models"), help="models folder (default: %(default)s)"
    )
    control.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    preview = kinds.add_parser(
        "preview",
        help="convert a local diffusers AutoencoderTiny folder (TAESD) to the preview decoder preview/<name>",
    )
    preview.add_argument("src", type=Path, help="local AutoencoderTiny folder (config.json and weights)")
    preview.add_argument(
        "name", choices=(TAESD, TAESDXL), help=f"{TAESD} (SD 1.x/2.x latents) or {TAESDXL} (SDXL latents)"
    )
    preview.add_argument(
        "--models", type=Path, default=Path("models"), help="models folder (default: %(default)s)"
    )
    preview.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    diffusers_parser.add_argument(
        "--publish",
        action="store_true",
        help="then upload the model to the model store (DATABASE_URL, S3_*) for workers to pull",
    )

    annotator = kinds.add_parser(
        "annotator", help="convert a source-filter annotator checkpoint (depth, hed, …) to filter/<model>"
    )
    annotator.add_argument("model", choices=sorted(set(ANNOTATOR_MODELS.values())), help="annotator model")
    annotator.add_argument(
        "src", type=Path, help="transformers folder (depth, segment) or .pth state dict (hed, mlsd, openpose)"
    )
    annotator.add_argument(
        "--config", type=json.loads, default=None, help="JSON overrides of the network's full-size config"
    )
    annotator.add_argument(
        "--models", type=Path, default=Path("models"), help="models folder (default: %(default)s)"
    )


def run_convert(args: argparse.Namespace) -> int:
    """Run a parsed ``convert`` command; returns the process exit status."""

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.convert_kind == "demo":
        from pipelines.models.upscalers import build_demo_upscalers

        for folder in build_demo_models(args.models, force=args.force, progress=progress):
            print(folder)
        for path in build_demo_upscalers(args.models, force=args.force, progress=progress):
            print(path)
        return 0
    if args.convert_kind == "annotator":
        from pipelines.models.annotators import convert_annotator  # imports torch

        try:
            print(convert_annotator(args.model, args.src, args.models, args.config))
        except (OSError, TypeError, ValueError) as err:  # no such file, an unknown config key, a mismatch
            print(f"cannot convert {args.src} as {args.model}: {err}", file=sys.stderr)
            return 2
        return 0
    if args.convert_kind == "text":
        if not (args.src / "config.json").is_file():
            print(f"not a transformers folder (no config.json): {args.src}", file=sys.stderr)
            return 2
        print(convert_gpt2_folder(args.src, args.models / TEXT_FOLDER / args.name, opset=args.opset))
        return 0
    if args.convert_kind == "controlnet":
        if not (args.src / "config.json").is_file():
            print(f"not a diffusers ControlNet folder (no config.json): {args.src}", file=sys.stderr)
            return 2
        dest = args.models / CONTROL_FOLDER / args.name
        print(convert_controlnet_folder(args.src, dest, opset=args.opset, progress=progress))
        return 0
    if args.convert_kind == "preview":
        if not (args.src / "config.json").is_file():
            print(f"not a diffusers AutoencoderTiny folder (no config.json): {args.src}", file=sys.stderr)
            return 2
        dest = args.models / PREVIEW_FOLDER / args.name
        print(convert_preview_folder(args.src, dest, opset=args.opset))
        return 0
    if not (args.src / "model_index.json").is_file():
        print(f"not a diffusers folder (no model_index.json): {args.src}", file=sys.stderr)
        return 2
    dest = args.models / args.name
    print(
        convert_diffusers_folder(
            args.src,
            dest,
            opset=args.opset,
            progress=progress,
            optimize=args.optimize,
            workers=args.workers,
            cnet=args.cnet,
        )
    )
    return 0
