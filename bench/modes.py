#!/usr/bin/env python3
"""Each image mode on the demo models against the matching diffusers pipeline, timed in the same run.

Ours is the production path: the chain the api builds for the request (``service.chains``), run
by ``pipelines.chain.run_chain`` on one warm ``SessionCache``. The reference is diffusers'
PyTorch pipeline on the very same weights (the demo models' torch sources), given the same seed,
size, steps, scheduler and starting noise, so both do the same work and their images agree
(the table shows the largest pixel difference to prove it):

- txt2img: ``StableDiffusionPipeline``;
- img2img: ``StableDiffusionImg2ImgPipeline``;
- inpaint: ``StableDiffusionInpaintPipeline`` on the 9-channel inpainting model;
- upscale: the Real-ESRGAN (RRDBNet) demo model as the PyTorch module spandrel builds;
- highres: txt2img, Lanczos resize, img2img (diffusers has no single pipeline for it).

With ``--families`` (``also``; ``only`` for them alone) the model families and pipelines join the
table, each sent as a user would (SD 2.1 768-v, SDXL txt2img and img2img, a LoRA, panorama,
ControlNet, InstructPix2Pix: ``bench/families.py``); ``--select`` keeps the modes it names.

After one warm-up run of each, the two sides alternate (ours, reference, ours, ...) so that
load from other processes hits both alike; medians and p90s are in milliseconds and the ratio
is ours / diffusers (below 1: ours is faster). A mode where ours is slower is profiled with
cProfile on our side and its top functions are reported.

Then the peak memory of a tiled Real-ESRGAN upscale of a 2048x2048 image through our
``upscale-resrgan`` stage, against the same model run untiled on the whole image and against a
process that only loads the model and the image: each in its own process, measured as that
process's peak resident set, read in the child itself (``VmHWM``, see ``peak_rss_mib``).

Results are printed as a Markdown table and written as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import os
import pstats
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

SEED = 7
PROMPT = "a photo of a cat sitting on a red chair"
NEGATIVE_PROMPT = "blurry, lowres"
STRENGTH = 0.6
HIGHRES_SCALE = 2
HIGHRES_STRENGTH = 0.5
INPAINT_MODEL = "stable-diffusion-onnx-v1-inpainting"
UPSCALER = "upscaling-real-esrgan-x4-plus"
UPSCALE_FACTOR = 4
#: Side of the image whose tiled upscale's memory is measured (issue 3, "Measure").
MEMORY_SIZE = 2048
#: The upscaler of the memory figure: Real-ESRGAN's compact v3 network, the cheapest of the stage's
#: models, so that the x4 upscale to 8192x8192 fits the time budget. Its memory is the stage's
#: (tiles, blend buffers, output), which no model changes; ``denoise`` 1 keeps it unmixed.
MEMORY_UPSCALER = "upscaling-real-esrgan-x4-v3"

Images = Callable[[], Image.Image]
#: Above this share of the cores used by other processes during the timings, the table warns.
BUSY_SHARE = 0.1


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` by nearest rank (as ``bench/suite.py`` computes it)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def gradient(width: int, height: int) -> Image.Image:
    """A smooth colour gradient with a little seeded noise: structure for img2img and the upscaler."""
    # Small integer types: the memory figure's baseline process makes a 2048x2048 one.
    x = np.arange(width, dtype=np.int32)[None, :]
    y = np.arange(height, dtype=np.int32)[:, None]
    channels = [x * 255 // width + 0 * y, y * 255 // height + 0 * x, (x + y) * 255 // (width + height)]
    pixels = np.stack([channel.astype(np.int16) for channel in channels], axis=-1)
    pixels += np.random.default_rng(SEED).integers(-8, 9, pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def centre_mask(width: int, height: int) -> Image.Image:
    """White (repaint) in the middle half of the image, black (keep) around it."""
    mask = Image.new("RGB", (width, height), "black")
    ImageDraw.Draw(mask).rectangle(
        (width // 4, height // 4, 3 * width // 4 - 1, 3 * height // 4 - 1), fill="white"
    )
    return mask


def seeded_noise(shape: tuple[int, ...], **kwargs: Any) -> Any:
    """diffusers' ``randn_tensor`` drawing onnx-web's noise instead
    (``pipelines.diffusion.model.initial_latents``)."""
    import torch

    return torch.from_numpy(np.random.default_rng(SEED).standard_normal(tuple(shape)).astype(np.float32))


@contextlib.contextmanager
def like_our_noise() -> Iterator[None]:
    """Make diffusers' img2img start where ours does: the VAE latent's mode, and our seeded noise."""
    from unittest import mock

    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as inpaint

    def mode(output: Any, generator: Any = None) -> Any:
        return output.latent_dist.mode()

    with (
        mock.patch.object(img2img, "retrieve_latents", mode),
        mock.patch.object(img2img, "randn_tensor", seeded_noise),
        mock.patch.object(inpaint, "retrieve_latents", mode),
    ):
        yield


# -- our side: the api's chain, run by the chain executor -------------------------------------


@dataclass
class Ours:
    """Builds chains the way the api does and runs them on one warm session cache."""

    models: Path
    sessions: Any = None
    config: Any = None
    registry: Any = None
    params_doc: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from pipelines.models.registry import ModelRegistry
        from pipelines.models.sessions import SessionCache
        from service.config import Config
        from service.params import load_params_doc

        self.sessions = SessionCache(4)
        self.config = Config(models_path=self.models)
        self.registry = ModelRegistry(self.models)
        self.params_doc = load_params_doc(self.config)

    def chain(self, route: str, query: Mapping[str, Any], source_size: tuple[int, int] | None = None) -> Any:
        """The ``BuiltChain`` the api stores for ``route`` with this query (the seed is fixed)."""
        from service import chains
        from service.params import Route, parse_request

        request = parse_request(
            cast(Route, route),
            {key: str(value) for key, value in query.items()},
            params_doc=self.params_doc,
            registry=self.registry,
            config=self.config,
            rng=random.Random(SEED),
        )
        output = {"image_format": self.config.image_format, "thumbnail_size": self.config.thumbnail_size}
        if source_size is None:
            return chains.build_txt2img(request, **output)
        builder = {
            "img2img": chains.build_img2img,
            "inpaint": chains.build_inpaint,
            "upscale": chains.build_upscale,
        }[route]
        return builder(request, source_size, **output)

    def runner(
        self, route: str, query: Mapping[str, Any], uploads: Mapping[str, Image.Image] | None = None
    ) -> Images:
        """A function that runs the route's chain once and returns its first output image."""
        from pipelines.chain import run_chain
        from pipelines.context import StageImage

        uploads = dict(uploads or {})
        source = uploads.get("source")
        built = self.chain(route, query, source.size if source is not None else None)
        # ``BuiltChain.inputs`` maps each stage input key to the upload field that feeds it.
        inputs = {key: uploads[name] for key, name in built.inputs.items() if name in uploads}

        def run() -> Image.Image:
            result = run_chain(built.chain, models_path=self.models, sessions=self.sessions, inputs=inputs)
            output = result.outputs[0]
            assert isinstance(output, StageImage), "an image chain's first output is an image"
            return output.image

        return run


# -- the reference side: diffusers (and spandrel) in PyTorch ----------------------------------


@dataclass
class Reference:
    """diffusers' pipelines on the demo models' torch weights, with our scheduler, seed and noise."""

    models: Path
    scheduler: str
    cfg: float
    pipes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from diffusers import (
            StableDiffusionImg2ImgPipeline,
            StableDiffusionInpaintPipeline,
            StableDiffusionPipeline,
        )

        from pipelines.models.demo import DEMO_MODELS, torch_parts

        parts = torch_parts(self.models, DEMO_MODELS[0].name)
        classes: dict[str, tuple[Any, dict[str, Any]]] = {
            "txt2img": (StableDiffusionPipeline, parts),
            "img2img": (StableDiffusionImg2ImgPipeline, parts),
            "inpaint": (StableDiffusionInpaintPipeline, torch_parts(self.models, INPAINT_MODEL)),
        }
        for mode, (pipeline_class, modules) in classes.items():
            pipe = pipeline_class(
                **modules,
                scheduler=self.fresh_scheduler(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
            pipe.set_progress_bar_config(disable=True)
            self.pipes[mode] = pipe

    def fresh_scheduler(self) -> Any:
        """A new scheduler from the model's config, as our pipeline makes one per run."""
        from pipelines.diffusion.schedulers import load_scheduler_config, make_scheduler
        from pipelines.models.demo import DEMO_MODELS

        return make_scheduler(
            self.scheduler, load_scheduler_config(self.models / DEMO_MODELS[0].name), seed=SEED
        )

    def call(self, mode: str, **kwargs: Any) -> Image.Image:
        """Run pipeline ``mode`` once with the shared prompt, guidance and generator."""
        import torch

        pipe = self.pipes[mode]
        pipe.scheduler = self.fresh_scheduler()
        with torch.inference_mode(), like_our_noise():
            image: Image.Image = pipe(
                PROMPT,
                negative_prompt=NEGATIVE_PROMPT,
                guidance_scale=self.cfg,
                generator=torch.Generator().manual_seed(SEED),
                **kwargs,
            ).images[0]
        return image

    def txt2img(self, size: int, steps: int) -> Image.Image:
        """``StableDiffusionPipeline`` from our starting latents."""
        import torch

        from pipelines.diffusion.model import initial_latents

        latents = torch.from_numpy(initial_latents(SEED, 1, size, size))
        return self.call("txt2img", width=size, height=size, num_inference_steps=steps, latents=latents)

    def img2img(self, source: Image.Image, steps: int, strength: float) -> Image.Image:
        """``StableDiffusionImg2ImgPipeline`` from our noise on the source's latents."""
        return self.call("img2img", image=source, strength=strength, num_inference_steps=steps)

    def inpaint(self, source: Image.Image, mask: Image.Image, steps: int) -> Image.Image:
        """``StableDiffusionInpaintPipeline`` from our starting latents."""
        import torch

        from pipelines.diffusion.model import initial_latents

        latents = torch.from_numpy(initial_latents(SEED, 1, source.width, source.height))
        return self.call(
            "inpaint",
            image=source,
            mask_image=mask,
            width=source.width,
            height=source.height,
            num_inference_steps=steps,
            latents=latents,
        )

    def highres(self, size: int, steps: int) -> Image.Image:
        """txt2img, a Lanczos resize by ``HIGHRES_SCALE``, then img2img: highres as diffusers
        users write it."""
        first = self.txt2img(size, steps)
        larger = first.resize((size * HIGHRES_SCALE, size * HIGHRES_SCALE), Image.Resampling.LANCZOS)
        return self.img2img(larger, steps, HIGHRES_STRENGTH)


def spandrel_upscaler() -> Callable[[Image.Image], Image.Image]:
    """The PyTorch module of our demo Real-ESRGAN, built by spandrel from the exported weights."""
    import torch

    from pipelines.models.upscalers import DEMO_UPSCALERS, demo_module

    module = demo_module(next(demo for demo in DEMO_UPSCALERS if demo.name == UPSCALER)).module

    def upscale(image: Image.Image) -> Image.Image:
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.inference_mode():
            output = module(pixels)[0].clamp(0, 1).permute(1, 2, 0).numpy()
        return Image.fromarray(np.rint(output * 255).astype(np.uint8))

    return upscale


# -- timing ------------------------------------------------------------------------------------


@dataclass
class Mode:
    """One mode: our run and the reference run of the same work."""

    name: str
    setting: str
    ours: Images
    reference: Images
    reference_name: str
    #: Applied to the reference's image before comparing (ours composites the kept area back).
    finish: Callable[[Image.Image], Image.Image] = lambda image: image


#: The image modes of the SD 1.5 demo, in the order of the table.
BASE_MODES = ("txt2img", "img2img", "inpaint", "upscale", "highres")


def base_query(size: int, steps: int) -> dict[str, Any]:
    """The request fields every mode sends; the api's defaults fill in the rest."""
    return {
        "prompt": PROMPT,
        "negativePrompt": NEGATIVE_PROMPT,
        "seed": SEED,
        "steps": steps,
        "width": size,
        "height": size,
    }


def api_guidance(ours: Ours, size: int, steps: int) -> tuple[str, float]:
    """The scheduler and cfg the api resolves for a request that names neither (the references run them)."""
    params = ours.chain("txt2img", base_query(size, steps)).chain["stages"][0]["params"]
    return str(params["scheduler"]), float(params["cfg"])


def build_modes(
    models: Path, size: int, steps: int, ours: Ours | None = None, names: tuple[str, ...] = BASE_MODES
) -> list[Mode]:
    """The modes of ``names`` (in ``BASE_MODES`` order), each with a diffusers (or spandrel)
    counterpart, on one warm session cache; only those are built (``upscale`` needs the upscalers)."""
    ours = ours or Ours(models)
    base = base_query(size, steps)
    reference = Reference(models, *api_guidance(ours, size, steps))
    source, mask = gradient(size, size), centre_mask(size, size)
    small = gradient(size // 2, size // 2)
    highres = {
        "highres": True,
        "highresScale": HIGHRES_SCALE,
        "highresStrength": HIGHRES_STRENGTH,
        "highresSteps": steps,
        "highresMethod": "lanczos",
        "highresIterations": 1,
    }
    keep = mask.convert("L")
    steps_text = f"{size}², {steps} steps"
    factories: dict[str, Callable[[], Mode]] = {
        "txt2img": lambda: Mode(
            "txt2img",
            steps_text,
            ours.runner("txt2img", base),
            lambda: reference.txt2img(size, steps),
            "StableDiffusionPipeline",
        ),
        "img2img": lambda: Mode(
            "img2img",
            f"{steps_text}, strength {STRENGTH}",
            ours.runner("img2img", {**base, "strength": STRENGTH}, {"source": source}),
            lambda: reference.img2img(source, steps, STRENGTH),
            "StableDiffusionImg2ImgPipeline",
        ),
        "inpaint": lambda: Mode(
            "inpaint",
            steps_text,
            # Full-res inpaint (the api's default) repaints the masked box alone, enlarged to a
            # 512 px tile; the whole image at its own size is the work diffusers' pipeline does.
            ours.runner(
                "inpaint",
                {**base, "model": INPAINT_MODEL, "fullresInpaint": False},
                {"source": source, "mask": mask},
            ),
            lambda: reference.inpaint(source, mask, steps),
            "StableDiffusionInpaintPipeline",
            finish=lambda image: Image.composite(image.convert("RGB"), source, keep),
        ),
        "upscale": lambda: Mode(
            "upscale",
            f"{size // 2}² → {size * 2}², Real-ESRGAN x4",
            ours.runner(
                "upscale",
                {
                    **base,
                    "upscale": True,
                    "upscaling": UPSCALER,
                    "scale": UPSCALE_FACTOR,
                    "outscale": UPSCALE_FACTOR,
                },
                {"source": small},
            ),
            functools.partial(spandrel_upscaler(), small),
            "spandrel RRDBNet (PyTorch)",
        ),
        "highres": lambda: Mode(
            "highres",
            f"{steps_text} → {size * HIGHRES_SCALE}², strength {HIGHRES_STRENGTH}",
            ours.runner("txt2img", {**base, **highres}),
            lambda: reference.highres(size, steps),
            "StableDiffusionPipeline + Img2ImgPipeline",
        ),
    }
    return [factories[name]() for name in BASE_MODES if name in names]


def max_difference(ours: Image.Image, reference: Image.Image) -> int | None:
    """The largest difference of one channel of one pixel, in levels of 255 (None if the sizes differ)."""
    if ours.size != reference.size:
        return None
    first = np.asarray(ours.convert("RGB"), dtype=np.int16)
    second = np.asarray(reference.convert("RGB"), dtype=np.int16)
    return int(np.abs(first - second).max())


def timed(run: Images) -> tuple[float, Image.Image]:
    """Milliseconds one run takes, and its image."""
    started = time.perf_counter()
    image = run()
    return (time.perf_counter() - started) * 1000, image


def summary(values: list[float]) -> dict[str, float]:
    """Median and p90 in milliseconds."""
    return {"median": statistics.median(values), "p90": percentile(values, 90)}


def profile(run: Images, top: int = 12) -> list[dict[str, Any]]:
    """One run under cProfile: the functions with the most time of their own, largest first."""
    profiler = cProfile.Profile()
    profiler.runcall(run)
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_, calls, own, total, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(filename).name}:{line}({name})",
                "calls": calls,
                "own_ms": own * 1000,
                "cumulative_ms": total * 1000,
            }
        )
    return sorted(rows, key=lambda row: -row["own_ms"])[:top]


def bench_mode(mode: Mode, rounds: int, bar: Any) -> dict[str, Any]:
    """Warm ``mode`` up once, then alternate ours and the reference ``rounds`` times each."""
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    images: dict[str, Image.Image] = {}
    cpu_before, started = cpu_seconds(), time.perf_counter()
    for index in range(rounds + 1):
        for side, run in (("ours", mode.ours), ("reference", mode.reference)):
            elapsed, images[side] = timed(run)
            if index:  # the first round loads sessions and fills caches
                times[side].append(elapsed)
            bar.update()
    ours, reference = summary(times["ours"]), summary(times["reference"])
    return {
        "setting": mode.setting,
        "reference": mode.reference_name,
        "ours_ms": ours,
        "reference_ms": reference,
        "ratio": ours["median"] / reference["median"],
        "max_pixel_difference": max_difference(images["ours"], mode.finish(images["reference"])),
        "runs": rounds,
        "others_cpu_share": others_share(cpu_before, cpu_seconds(), time.perf_counter() - started),
    }


def bench_modes(modes: list[Mode], rounds: int, retries: int = 0) -> dict[str, Any]:
    """Time each mode (``bench_mode``); one that other processes' CPU use made busier than
    ``BUSY_SHARE`` is timed again, up to ``retries`` more times, and its quietest attempt kept."""
    results: dict[str, Any] = {}
    with tqdm(total=len(modes) * 2 * (rounds + 1), desc="modes", unit="run") as bar:
        for mode in modes:
            bar.set_postfix_str(mode.name)
            attempts = [bench_mode(mode, rounds, bar)]
            while attempts[-1]["others_cpu_share"] > BUSY_SHARE and len(attempts) <= retries:
                bar.total += 2 * (rounds + 1)
                bar.set_postfix_str(f"{mode.name} (again: the machine was busy)")
                attempts.append(bench_mode(mode, rounds, bar))
            results[mode.name] = {
                **min(attempts, key=lambda attempt: attempt["others_cpu_share"]),
                "attempts": len(attempts),
            }
    for mode in modes:
        if results[mode.name]["ratio"] > 1:
            results[mode.name]["profile"] = profile(mode.ours)
    return results


# -- peak memory of a large tiled upscale -----------------------------------------------------

MEMORY_CASES = ("baseline", "tiled", "untiled")


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB since it started its program.

    ``VmHWM`` starts afresh at ``exec``; ``getrusage``'s ``ru_maxrss`` does not, so in a child of a
    large process it would count the parent's pages inherited through ``fork``. ``ru_maxrss`` is
    the fallback where ``/proc`` is missing.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_child(models: Path, case: str, size: int) -> dict[str, Any]:
    """Run one memory case in this process and report this process's peak resident set.

    ``baseline`` loads the model and makes the image only; ``tiled`` runs the api's upscale chain
    (our ``upscale-resrgan`` stage, tiles of the default ``unet_tile``); ``untiled`` feeds the whole
    image to the same ONNX session at once.
    """
    from pipelines.imageops.upscale import model_path, run_model_tile

    ours = Ours(models)
    source = gradient(size, size)
    session = ours.sessions.get(model_path(models, MEMORY_UPSCALER))
    started = time.perf_counter()
    output_size = None
    if case == "tiled":
        query = {
            "upscale": True,
            "upscaling": MEMORY_UPSCALER,
            "denoise": 1,
            "scale": UPSCALE_FACTOR,
            "outscale": UPSCALE_FACTOR,
        }
        output_size = ours.runner("upscale", query, {"source": source})().size
    elif case == "untiled":
        output_size = run_model_tile(session, source, UPSCALE_FACTOR).size
    peak_mib = peak_rss_mib()
    return {
        "case": case,
        "input": [size, size],
        "output": list(output_size) if output_size else None,
        "peak_rss_mib": peak_mib,
        "seconds": time.perf_counter() - started,
    }


def bench_memory(models: Path, size: int, cases: tuple[str, ...] = MEMORY_CASES) -> dict[str, Any]:
    """Each memory case in its own process, so that one case's peak cannot hide another's."""
    results: dict[str, Any] = {}
    for case in tqdm(cases, desc=f"{size}² upscale memory", unit="process"):
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-case",
                case,
                "--models",
                str(models),
                "--memory-size",
                str(size),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            results[case] = {
                "case": case,
                "error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"],
            }
            continue
        results[case] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results.get("baseline", {}).get("peak_rss_mib")
    for case in ("tiled", "untiled"):
        if base and "peak_rss_mib" in results.get(case, {}):
            results[case]["above_baseline_mib"] = results[case]["peak_rss_mib"] - base
    tiled, untiled = results.get("tiled", {}), results.get("untiled", {})
    if tiled.get("above_baseline_mib") and untiled.get("above_baseline_mib"):
        results["tiled_over_untiled"] = tiled["above_baseline_mib"] / untiled["above_baseline_mib"]
    if "above_baseline_mib" in tiled:
        # The output alone (float32 sums and weights, then 8-bit RGB) sets a floor for any method.
        results["tiled_over_output_bytes"] = tiled["above_baseline_mib"] / (
            (size * UPSCALE_FACTOR) ** 2 * 3 / 2**20
        )
    return results


# -- the whole run -----------------------------------------------------------------------------


def build_models(models: Path) -> None:
    """The demo diffusion models (with their torch sources) and the demo upscalers."""
    from pipelines.models.demo import build_demo_models
    from pipelines.models.upscalers import build_demo_upscalers

    build_demo_models(models)
    build_demo_upscalers(models)


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy (``/proc/stat``: all but idle and iowait), and
    those this process and its children have used; ``nan`` for the first where ``/proc`` is missing."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return float("nan"), used
    # user nice system idle iowait irq softirq steal (guest time is counted in user already)
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK"), used


def others_share(before: tuple[float, float], after: tuple[float, float], seconds: float) -> float:
    """The share of the machine's CPU that other processes used between two ``cpu_seconds``."""
    cores = os.cpu_count() or 1
    busy, own = after[0] - before[0], after[1] - before[1]
    return max(0.0, busy - own) / (seconds * cores)


def select_modes(
    folder: Path, size: int, steps: int, families: str, select: tuple[str, ...] | None
) -> list[Mode]:
    """The modes to time: the base modes unless ``families`` is ``only``, the family modes
    (``bench.families``) unless it is ``no``, and of those only the ones ``select`` names (if given)."""
    from bench.families import FAMILY_MODES, build_family_modes

    wanted = set(select) if select else set(BASE_MODES + FAMILY_MODES)
    unknown = wanted - set(BASE_MODES + FAMILY_MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; known: {', '.join(BASE_MODES + FAMILY_MODES)}")
    ours = Ours(folder)
    modes: list[Mode] = []
    if families != "only" and wanted & set(BASE_MODES):
        modes += build_modes(folder, size, steps, ours, tuple(wanted))
    if families != "no":
        names = tuple(name for name in FAMILY_MODES if name in wanted)
        modes += build_family_modes(ours, size, steps, *api_guidance(ours, size, steps), names)
    return modes


def run(
    *,
    size: int = 128,
    steps: int = 10,
    rounds: int = 3,
    memory_size: int = MEMORY_SIZE,
    models: Path | None = None,
    families: str = "no",
    select: tuple[str, ...] | None = None,
    retries: int = 0,
) -> dict[str, Any]:
    """Build the models (unless ``models`` holds them), time the modes and measure the memory.

    ``families``: ``no`` times the SD 1.5 demo's modes only, ``also`` adds the model families and
    pipelines of ``bench.families``, ``only`` times those alone; ``select`` keeps the modes it names;
    ``retries``: how often a mode timed on a busy machine is timed again (``bench_modes``).
    """
    import torch

    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-modes-") as tmp:
        folder = models or Path(tmp) / "models"
        started = time.perf_counter()
        build_models(folder)
        built_s = time.perf_counter() - started
        modes = select_modes(folder, size, steps, families, select)
        cpu_before, timing_started = cpu_seconds(), time.perf_counter()
        timings = bench_modes(modes, rounds, retries)
        others = others_share(cpu_before, cpu_seconds(), time.perf_counter() - timing_started)
        memory = bench_memory(folder, memory_size) if memory_size else {}
    import onnxruntime

    return {
        "environment": {
            "cpu_cores": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
            # The share of all cores other processes kept busy while the modes were timed.
            "others_cpu_share": others,
            "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "model_build_s": built_s,
        },
        "modes": timings,
        "memory": memory,
    }


def table(results: Mapping[str, Any]) -> str:
    """The results as Markdown: the machine, one row per mode, then the memory figures."""
    environment = results.get("environment") or {}
    lines = []
    if "cpu_cores" in environment:
        before, after = environment["load_average_before"], environment["load_average_after"]
        lines += [
            (
                f"{environment['cpu_cores']} CPU cores, load average (1/5/15 min) "
                f"{' / '.join(f'{value:.2f}' for value in before)} before, "
                f"{' / '.join(f'{value:.2f}' for value in after)} after (this run's own threads "
                f"included); other processes used {environment['others_cpu_share']:.0%} of the cores "
                f"while the modes were timed; torch {environment['torch']} "
                f"({environment['torch_threads']} threads), onnxruntime {environment['onnxruntime']}"
            ),
            "",
        ]
        busy = [name for name, row in results["modes"].items() if row["others_cpu_share"] > BUSY_SHARE]
        if busy:
            lines += [
                (
                    f"**The machine was busy** in {', '.join(busy)}: other processes used more than "
                    f'{BUSY_SHARE:.0%} of the cores meanwhile (column "others\' CPU"), which slows '
                    "PyTorch's spinning thread pool far more than ONNX Runtime, so those ratios flatter "
                    "ours; rerun them on a quiet machine (``--select``, ``--retries``)."
                ),
                "",
            ]
    lines += [
        (
            "| mode | setting | ours median / p90 ms | diffusers median / p90 ms | "
            "ours ÷ diffusers | max Δ px | others' CPU | reference |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["modes"].items():
        ours, reference = row["ours_ms"], row["reference_ms"]
        lines.append(
            f"| {name} | {row['setting']} | {ours['median']:.0f} / {ours['p90']:.0f} | "
            f"{reference['median']:.0f} / {reference['p90']:.0f} | **{row['ratio']:.2f}** | "
            f"{row['max_pixel_difference']} | {row['others_cpu_share']:.0%} | {row['reference']} |"
        )
    memory = results.get("memory") or {}
    if memory:
        lines += [
            "",
            "| upscale memory (peak RSS of its own process) | MiB | above baseline | seconds |",
            "|---|---|---|---|",
        ]
        for case in MEMORY_CASES:
            entry = memory.get(case, {})
            if "peak_rss_mib" not in entry:
                lines.append(f"| {case} | failed: {entry.get('error')} | | |")
                continue
            shape = (
                f"{entry['input'][0]}² → {entry['output'][0]}²"
                if entry["output"]
                else f"{entry['input'][0]}² input"
            )
            lines.append(
                f"| {case} ({shape}) | {entry['peak_rss_mib']:.0f} | "
                f"{entry.get('above_baseline_mib', 0):.0f} | {entry['seconds']:.1f} |"
            )
        if "tiled_over_untiled" in memory:
            lines.append(
                f"\ntiled ÷ untiled (above baseline): **{memory['tiled_over_untiled']:.2f}**; "
                f"tiled ÷ 8-bit output size: {memory['tiled_over_output_bytes']:.1f}"
            )
    for name, row in results["modes"].items():
        if "profile" in row:
            lines += [
                "",
                f"ours is slower in {name}; cProfile of one run (own time):",
                "",
                "| function | calls | own ms | cumulative ms |",
                "|---|---|---|---|",
            ]
            lines += [
                (
                    f"| `{entry['function']}` | {entry['calls']} | {entry['own_ms']:.0f} | "
                    f"{entry['cumulative_ms']:.0f} |"
                )
                for entry in row["profile"]
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the benchmark (or one memory case) and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/modes.json"))
    parser.add_argument(
        "--size", type=int, default=128, help="image side of the diffusion modes (multiple of 64)"
    )
    parser.add_argument("--steps", type=int, default=10, help="scheduler steps of the diffusion modes")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each side after the warm-up")
    parser.add_argument("--memory-size", type=int, default=MEMORY_SIZE, help="upscale input side; 0 skips")
    parser.add_argument(
        "--models", type=Path, help="a models folder to build into and reuse (default: a temp dir)"
    )
    parser.add_argument(
        "--families",
        nargs="?",
        const="also",
        default="no",
        choices=("no", "also", "only"),
        help=(
            "also time the model families and pipelines (SD 2.1, SDXL, LoRA, panorama, ControlNet, "
            "InstructPix2Pix; bench/families.py); 'only': just those, without the memory figure"
        ),
    )
    parser.add_argument(
        "--select",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        help="comma-separated modes to time, e.g. sdxl-txt2img,panorama (family ones need --families)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help=(
            "time a mode again (up to this often) when other processes used over "
            f"{BUSY_SHARE * 100:.0f}%% of the cores meanwhile; its quietest attempt is kept"
        ),
    )
    parser.add_argument("--memory-case", choices=MEMORY_CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_case:
        print(json.dumps(memory_child(args.models, args.memory_case, args.memory_size)))
        return 0
    results = run(
        size=args.size,
        steps=args.steps,
        rounds=args.rounds,
        memory_size=0 if args.families == "only" else args.memory_size,
        models=args.models,
        families=args.families,
        select=args.select,
        retries=args.retries,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("\n" + table(results))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
