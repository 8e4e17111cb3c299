"""Upscaling: plain resampling and the super-resolution ONNX models (contract §3.3, §8.5).

``upscale-simple`` and highres use :func:`resize_simple`; the model stages (Real-ESRGAN, SwinIR,
BSRGAN) run :func:`upscale_with_model`, which feeds the model tile by tile through
:mod:`pipelines.imageops.tiling` and finishes any ``outscale`` beyond the model's native factor with Lanczos.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.context import StageContext, StageImage
from pipelines.imageops.tiling import process_tiled

#: Resampling filters ``upscale-simple`` and highres accept, by their API names.
SIMPLE_METHODS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}


#: Overlap of the model upscalers' tiles: enough for the blend to hide tile edges at a quarter
#: more work, where the chain default of 0.5 would quadruple it.
MODEL_TILE_OVERLAP = 0.25


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``size`` multiplied by ``scale``, rounded to whole pixels and never below one pixel."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def resize_simple(image: Image.Image, method: str, scale: float) -> Image.Image:
    """Resize ``image`` by ``scale`` with a PIL filter; a scale of 1 or less returns it unchanged.

    onnx-web's simple upscaler only ever enlarges (highres with scale 1 is a no-op), so factors
    at or below one do not shrink the image either.
    """
    if method not in SIMPLE_METHODS:
        raise ValueError(f"unknown upscaling method {method!r}: expected one of {', '.join(SIMPLE_METHODS)}")
    if scale <= 1:
        return image
    return image.resize(scaled_size(image.size, scale), SIMPLE_METHODS[method])


def with_image(item: StageImage, image: Image.Image, **metadata: Any) -> StageImage:
    """A copy of ``item`` holding ``image``, its metadata ``size`` updated and ``metadata`` merged in."""
    size = {"width": image.width, "height": image.height}
    return StageImage(image, {**item.metadata, **metadata, "size": size})


def file_hash(path: Path) -> str:
    """Short upper-case SHA-256 of a model file, as metadata lists it; cached per file version."""
    stat = path.stat()
    return _file_hash(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _file_hash(path: Path, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10].upper()


def with_model(item: StageImage, name: str, path: Path) -> StageImage:
    """``item`` with ``name`` (and its hash) added to its metadata's ``models`` list (contract §7.3)."""
    models = [entry for entry in item.metadata.get("models", []) if entry.get("name") != name]
    entry = {"name": name, "hash": file_hash(path), "weight": 1.0}
    return StageImage(item.image, {**item.metadata, "models": [*models, entry]})


def model_scale(session: Any, default: int) -> int:
    """A model's native scale, from the ``scale`` our converter records, else ``default``."""
    recorded = session.get_modelmeta().custom_metadata_map.get("scale")
    return int(recorded) if recorded else default


def run_model_tile(session: Any, tile: Image.Image, scale: int) -> Image.Image:
    """One tile through an upscaling model: RGB in [0, 1], padded to its fixed input size if it has one.

    Tiles cut at the image's right and bottom edges are smaller than the model's fixed size; they
    are padded by repeating their edge pixels (noise there would bleed into the result through the
    model's receptive field) and the output is cropped back.
    """
    pixels = np.asarray(tile.convert("RGB"), dtype=np.float32) / 255.0
    height, width = pixels.shape[:2]
    fixed_h, fixed_w = session.get_inputs()[0].shape[2:4]
    if isinstance(fixed_h, int) and isinstance(fixed_w, int):
        if height > fixed_h or width > fixed_w:
            raise ValueError(f"tile {width}x{height} is larger than the model's input {fixed_w}x{fixed_h}")
        pixels = np.pad(pixels, ((0, fixed_h - height), (0, fixed_w - width), (0, 0)), mode="edge")
    batch = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
    output = session.run(None, {session.get_inputs()[0].name: batch})[0][0]
    output = output[:, : height * scale, : width * scale]
    return Image.fromarray(np.rint(np.clip(output.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8))


def upscale_with_model(
    image: Image.Image,
    session: Any,
    *,
    scale: int,
    outscale: float,
    tile: int,
    overlap: float = MODEL_TILE_OVERLAP,
    on_tile: Callable[[int, int], None] = lambda done, total: None,
    check_cancelled: Callable[[], None] = lambda: None,
) -> Image.Image:
    """Upscale ``image`` with an ONNX super-resolution model, tile by tile, to ``outscale`` times its size.

    The model runs at its native ``scale``; any other ``outscale`` is reached with Lanczos from
    the model's result (contract §8.5: outscale beyond the model's factor is made up by Lanczos).
    A model with a fixed input size never gets tiles bigger than that size.
    """
    fixed = session.get_inputs()[0].shape[2]
    if isinstance(fixed, int):
        tile = min(tile, fixed)
    upscaled = process_tiled(
        image,
        tile,
        overlap,
        scale,
        "grid",
        lambda piece, mask: run_model_tile(session, piece, scale),
        on_tile=on_tile,
        check_cancelled=check_cancelled,
        noise=None,
    )
    target = scaled_size(image.size, outscale)
    if upscaled.size == target:
        return upscaled
    return upscaled.resize(target, Image.Resampling.LANCZOS)


def interpolate_models(first: Path, second: Path, weight: float, dest: Path) -> Path:
    """Write ``weight * first + (1 - weight) * second``, weight by weight, to ``dest``
    (network interpolation).

    Real-ESRGAN's general v3 model and its ``-wdn`` sibling share one graph; mixing their weights
    is how Real-ESRGAN turns its ``denoise`` strength into a model in between (DNI).
    """
    import onnx
    from onnx import numpy_helper

    mixed = onnx.load(str(first))
    other = {
        tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(str(second)).graph.initializer
    }
    for index, tensor in enumerate(mixed.graph.initializer):
        values = numpy_helper.to_array(tensor)
        if tensor.name not in other or other[tensor.name].shape != values.shape:
            raise ValueError(f"{first.name} and {second.name} do not share weight {tensor.name!r}")
        if np.issubdtype(values.dtype, np.floating):
            blended = (weight * values + (1 - weight) * other[tensor.name]).astype(values.dtype)
            mixed.graph.initializer[index].CopyFrom(numpy_helper.from_array(blended, tensor.name))
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Workers sharing the models folder may mix the same pair at once: each writes its own file.
    partial = dest.with_name(f"{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        onnx.save(mixed, str(partial))
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)
    return dest


def upscaling_model_name(params: dict[str, Any]) -> str:
    """The stage's model, ``upscale_model`` (the api refuses a model stage without one)."""
    name = params["upscale_model"]
    if not name:
        raise ValueError("this stage needs an 'upscaling' model name")
    return str(name)


def model_path(models_path: Path, name: str) -> Path:
    """``<models>/<name>.onnx``, which must exist."""
    path = models_path / f"{name}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"model {name!r} not found: no {path.name} in the models folder")
    return path


def sources_fingerprint(*paths: Path) -> str:
    """A short tag that changes whenever one of ``paths`` is replaced, rewritten or truncated.

    Size and modification time stand in for the contents: hashing both models on every job would
    read them in full, and any copy, conversion or damage that changes the bytes changes these too.
    """
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:12]


def denoised_model(models_path: Path, name: str, denoise: float) -> Path:
    """The Real-ESRGAN v3 model mixed with its ``-wdn`` sibling by ``denoise``, cached under ``.cache``.

    Other models, a denoise of 1 (the plain model) and a v3 model without a sibling come back as
    they are. The strength is rounded to two decimals to bound the number of cached mixes. The
    cached mix is named for the versions of both sources it was made from, so a replaced or
    damaged source is mixed again (and a damaged one fails as :class:`~pipelines.chain.ModelInvalid`)
    rather than hidden behind an older mix; writing a mix removes the older ones of its strength.
    """
    path = model_path(models_path, name)
    sibling = models_path / f"{name}-wdn.onnx"
    if "x4-v3" not in name or name.endswith("-wdn") or denoise >= 1 or not sibling.is_file():
        return path
    stem = f"{name}-dni-{denoise:.2f}"
    mixed = models_path / ".cache" / f"{stem}-{sources_fingerprint(path, sibling)}.onnx"
    if not mixed.is_file():
        _mix_sources(path, sibling, round(denoise, 2), mixed)
        _remove_older_mixes(mixed, stem)
    return mixed


def _mix_sources(first: Path, second: Path, weight: float, dest: Path) -> None:
    """:func:`interpolate_models`, reporting a source that is not a readable ONNX file as a damaged model."""
    from google.protobuf.message import DecodeError

    # Imported here: pipelines.chain imports the stage catalogue, which imports this module.
    from pipelines.chain import ModelInvalid

    try:
        interpolate_models(first, second, weight, dest)
    except DecodeError as err:
        raise ModelInvalid(f"cannot mix {first.name} with {second.name}: {err}") from err


def _remove_older_mixes(current: Path, stem: str) -> None:
    """Delete the mixes of ``stem`` other than ``current``: those of earlier source versions (and
    the unversioned ``<stem>.onnx`` of earlier releases), which nothing loads any more."""
    older = [current.with_name(f"{stem}.onnx"), *current.parent.glob(f"{glob.escape(stem)}-*.onnx")]
    for path in older:
        if path != current:
            path.unlink(missing_ok=True)


def run_upscaling_stage(
    ctx: StageContext, params: dict[str, Any], images: list[StageImage], max_tile: int
) -> list[StageImage]:
    """What ``upscale-resrgan``, ``upscale-bsrgan`` and ``upscale-swinir`` share.

    Params: ``upscale_model`` names the model; ``scale`` is its native factor when the file does
    not record one; ``outscale`` is the final factor; ``denoise`` (0 to 1) mixes Real-ESRGAN v3
    with its ``-wdn`` sibling; ``tiles`` (at most ``max_tile``) is the tile size the model sees.
    """
    name = upscaling_model_name(params)
    path = denoised_model(ctx.models_path, name, float(params["denoise"]))
    session = ctx.sessions.get(path)
    scale = model_scale(session, int(params["scale"]))
    outscale = float(params["outscale"])
    tile = min(max_tile, int(params.get("tiles", max_tile)))
    upscaled = []
    for item in images:
        image = upscale_with_model(
            item.image,
            session,
            scale=scale,
            outscale=outscale,
            tile=tile,
            on_tile=ctx.on_tile,
            check_cancelled=ctx.check_cancelled,
        )
        upscaled.append(with_model(with_image(item, image), name, path))
    ctx.on_step(1)
    return upscaled
