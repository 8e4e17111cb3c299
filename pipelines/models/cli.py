"""``onnx-web convert``: the command line of the demo builder and the diffusers converter."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipelines.models.convert import DEFAULT_OPSET, OPTIMIZE_CHOICES, convert_diffusers_folder
from pipelines.models.demo import build_demo_models


def add_convert_arguments(subparsers: Any) -> None:
    """Add ``convert demo`` and ``convert diffusers`` to the ``onnx-web`` command line."""
    convert = subparsers.add_parser("convert", help="build the demo models or convert a checkpoint to ONNX")
    kinds = convert.add_subparsers(dest="convert_kind", required=True)

    demo = kinds.add_parser("demo", help="build the small random-weight demo diffusion models")
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


def run_convert(args: argparse.Namespace) -> int:
    """Run a parsed ``convert`` command; returns the process exit status."""

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.convert_kind == "demo":
        for folder in build_demo_models(args.models, force=args.force, progress=progress):
            print(folder)
        return 0
    if not (args.src / "model_index.json").is_file():
        print(f"not a diffusers folder (no model_index.json): {args.src}", file=sys.stderr)
        return 2
    dest = args.models / args.name
    print(
        convert_diffusers_folder(
            args.src, dest, opset=args.opset, progress=progress, optimize=args.optimize, workers=args.workers
        )
    )
    return 0
