"""Release references: fixed-seed jobs of every mode, compared with the images they made before.

Each case is one request as a client sends it (the GUI's multipart document, the flat JSON body or
a chain), with inputs drawn here, so the same case gives the same pixels on the same models and
platform. Its outputs are compared with the PNGs under ``refs/<platform>/`` by PSNR, which is
symmetric (the same figure whichever image is the reference): identical images score infinity, and
a case passes at its ``min_psnr`` or above. A change to what a pipeline computes (a scheduler's
sigmas, a guidance formula, a tile's blend, a dropped negative prompt) moves it below; the rounding
of another CPU or thread count does not.

``make test`` runs the cases against the demo models on the CPU worker (``test_release.py``).
Against any running server, with its own models::

    python -m tests.e2e.release                          # starts a local stack on the demo models
    python -m tests.e2e.release --url http://gpu-1:5000 --platform cuda --key owk_…
    python -m tests.e2e.release --update                 # after a change meant to move pixels

``--update`` writes the references (``make refs`` for the CPU set); a failed comparison leaves the
new image, the reference and their difference in ``test-results/release/`` to look at.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageOps
from tqdm import tqdm

from tests.e2e.images import gradient, half_mask, png
from tests.fixtures.faces import draw_face

REFS = Path(__file__).parent / "refs"
RESULTS = Path("test-results") / "release"
#: The smallest PSNR of a pass. Measured on the CPU demo set (README, "Release references"): runs on
#: one machine are identical; float-level noise (ONNX Runtime's graph optimisations off, one thread)
#: scores 63.9 dB at worst (highres; 69 dB and up elsewhere), while cfg 6.5 for 6.0 scores 52.3 dB,
#: an empty negative prompt 44.0 and eta 0.1 for 0 42.8.
DEFAULT_MIN_PSNR = 55.0
TERMINAL = {"success", "failed", "cancelled"}


@dataclass(frozen=True)
class Case:
    """One request and the images it must make."""

    name: str
    #: ``/api/txt2img``, ``/api/img2img``, ``/api/inpaint``, ``/api/upscale``, ``/api/blend``,
    #: ``/api/job`` (a chain document as JSON).
    path: str
    #: The GUI's ``json`` document for a multipart request; else the JSON body.
    document: Mapping[str, Any]
    #: Image parts by field name; none means a JSON body.
    files: Mapping[str, Callable[[], Image.Image]] = field(default_factory=dict)
    min_psnr: float = DEFAULT_MIN_PSNR


#: What every diffusion case shares: a short run at 128² (the least the api takes), a negative
#: prompt and a fixed seed.
BASE = {
    "prompt": "a lighthouse on a cliff at dusk",
    "negativePrompt": "blurry",
    "seed": 1234,
    "steps": 4,
    "cfg": 6.0,
    "scheduler": "ddim",
    "width": 128,
    "height": 128,
}
SDXL = "diffusion-sdxl-demo"


def _source() -> Image.Image:
    """The gradient with a disc on it: edges for the filters and control images to find."""
    image = gradient(128, 128)
    ImageDraw.Draw(image).ellipse((24, 24, 88, 88), fill=(240, 240, 240))
    return image


def _small() -> Image.Image:
    return gradient(32, 32)


def _face() -> Image.Image:
    """A face the correction's detector finds (a gradient has none, and the corrector would idle)."""
    return draw_face(64)


def _mask() -> Image.Image:
    return half_mask(128, 128)


def _flipped() -> Image.Image:
    return ImageOps.mirror(gradient(128, 128))


def _txt2img(name: str, **params: Any) -> Case:
    return Case(name, "/api/txt2img", {**BASE, **params})


def _image(name: str, route: str, files: Mapping[str, Callable[[], Image.Image]], **params: Any) -> Case:
    document: dict[str, Any] = {"params": {**BASE, **params.pop("params", {})}, **params}
    return Case(name, f"/api/{route}", document, files)


CASES: tuple[Case, ...] = (
    _txt2img("txt2img-ddim"),
    _txt2img("txt2img-euler-a", scheduler="euler-a"),
    _txt2img("txt2img-dpm-multi", scheduler="dpm-multi"),
    _txt2img("txt2img-unipc-multi", scheduler="unipc-multi"),
    _txt2img("txt2img-heun", scheduler="heun"),
    _txt2img("txt2img-batch", batch=2, scheduler="pndm"),
    _txt2img("txt2img-v-prediction", model="stable-diffusion-onnx-v2-1"),
    _txt2img("txt2img-lpw", prompt="a (lighthouse:1.3) on a [cliff], ((dusk))", pipeline="lpw"),
    _txt2img("txt2img-networks", prompt="a lighthouse <lora:demo-detail:0.8> <inversion:demo-style:1.0>"),
    _txt2img("txt2img-tokens", prompt="<clip:skip:2> a (lighthouse|tower) <reseed:0:0:32:32:99>"),
    _txt2img(
        "txt2img-highres",
        prompt="a lighthouse || a detailed lighthouse",
        highres=True,
        highresScale=2,
        highresStrength=0.5,
        highresMethod="bilinear",
        highresSteps=3,
    ),
    _txt2img("txt2img-panorama", pipeline="panorama", width=256, unet_tile=128),
    _txt2img("txt2img-sdxl", model=SDXL),
    _txt2img("txt2img-panorama-sdxl", model=SDXL, pipeline="panorama-sdxl", width=256, unet_tile=128),
    _image("img2img", "img2img", {"source": _source}, params={"strength": 0.6}),
    _image("img2img-filter", "img2img", {"source": _source}, params={"strength": 0.5, "sourceFilter": "hed"}),
    _image("img2img-loopback", "img2img", {"source": _source}, params={"strength": 0.5, "loopback": 2}),
    _image(
        "img2img-controlnet",
        "img2img",
        {"source": _source},
        params={
            "pipeline": "controlnet",
            "control": "demo-control",
            "strength": 0.8,
            "sourceFilter": "canny",
        },
    ),
    _image(
        "img2img-pix2pix",
        "img2img",
        {"source": _source},
        params={"model": "stable-diffusion-onnx-instruct-pix2pix", "pipeline": "pix2pix", "strength": 1.0},
    ),
    _image("img2img-sdxl", "img2img", {"source": _source}, params={"model": SDXL, "strength": 0.6}),
    _image(
        "inpaint",
        "inpaint",
        {"source": _source, "mask": _mask},
        params={"noise": "fill-mask", "fillColor": "white"},
    ),
    _image("inpaint-sdxl", "inpaint", {"source": _source, "mask": _mask}, params={"model": SDXL}),
    _image(
        "outpaint",
        "inpaint",
        {"source": _source, "mask": lambda: Image.new("RGB", (128, 128), "black")},
        border={"left": 16, "right": 0, "top": 8, "bottom": 0},
    ),
    _image(
        "upscale-real-esrgan",
        "upscale",
        {"source": _small},
        params={"upscaling": "upscaling-real-esrgan-x4-v3"},
        upscale={"enabled": True, "scale": 4, "outscale": 4},
    ),
    _image(
        "upscale-swinir",
        "upscale",
        {"source": _small},
        params={"upscaling": "upscaling-swinir-real-large-x4"},
        upscale={"enabled": True, "scale": 4, "outscale": 2},
    ),
    _image(
        "upscale-bsrgan",
        "upscale",
        {"source": _small},
        params={"upscaling": "upscaling-bsrgan-x4"},
        upscale={"enabled": True, "scale": 4, "outscale": 4},
    ),
    _image(
        "upscale-stable-diffusion",
        "upscale",
        {"source": _small},
        params={"upscaling": "upscaling-stable-diffusion-x4", "steps": 2},
        upscale={"enabled": True, "scale": 4, "outscale": 4, "denoise": 0.2},
    ),
    # The face is corrected first: after the demo upscaler's random weights there is none to find.
    _image(
        "upscale-correction",
        "upscale",
        {"source": _face},
        params={"upscaling": "upscaling-real-esrgan-x4-v3", "correction": "correction-gfpgan-v1-3"},
        upscale={
            "enabled": True,
            "scale": 4,
            "outscale": 2,
            "faces": True,
            "upscaleOrder": "correction-first",
        },
    ),
    Case("blend", "/api/blend", {}, {"source:0": _source, "source:1": _flipped, "mask": _mask}),
    Case(
        "chain-grid",
        "/api/job",
        {
            "defaults": {**BASE, "scheduler": "euler-a"},
            "stages": [
                {"name": "cell-0", "type": "source-txt2img", "params": {"prompt": "a red lighthouse"}},
                {"name": "cell-1", "type": "source-txt2img", "params": {"prompt": "a blue lighthouse"}},
                {"name": "grid", "type": "blend-grid", "params": {"width": 2, "height": 1}},
            ],
        },
    ),
)


@dataclass(frozen=True)
class Comparison:
    """How one output compares with its reference."""

    name: str
    psnr: float
    #: The largest difference of any channel of any pixel, in levels of 255.
    max_diff: int
    #: Why it cannot be compared (missing reference, other size); None when it was compared.
    problem: str | None = None

    def passed(self, min_psnr: float) -> bool:
        return self.problem is None and self.psnr >= min_psnr

    def describe(self) -> str:
        if self.problem is not None:
            return f"{self.name}: {self.problem}"
        figure = "identical" if math.isinf(self.psnr) else f"PSNR {self.psnr:.1f} dB"
        return f"{self.name}: {figure}, largest difference {self.max_diff} levels"


def psnr(first: Image.Image, second: Image.Image) -> tuple[float, int]:
    """Peak signal-to-noise ratio of two same-sized RGB images in dB (infinite when equal), and
    their largest channel difference."""
    a = np.asarray(first.convert("RGB"), dtype=np.float64)
    b = np.asarray(second.convert("RGB"), dtype=np.float64)
    difference = np.abs(a - b)
    mse = float(np.mean(difference**2))
    peak = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return peak, int(difference.max())


def compare(name: str, actual: Image.Image, reference_path: Path) -> Comparison:
    if not reference_path.exists():
        return Comparison(name, 0.0, 255, f"no reference at {reference_path}: run with --update")
    with Image.open(reference_path) as opened:
        reference = opened.convert("RGB")
    if reference.size != actual.size:
        return Comparison(name, 0.0, 255, f"size {actual.size}, reference {reference.size}")
    peak, max_diff = psnr(actual, reference)
    return Comparison(name, peak, max_diff)


class ReleaseClient:
    """Submits a case, waits for its job and fetches its outputs."""

    def __init__(self, http: httpx.Client, timeout_s: float = 300.0) -> None:
        self.http = http
        self.timeout_s = timeout_s

    def run(self, case: Case) -> list[Image.Image]:
        if case.files:
            parts: dict[str, Any] = {"json": (None, json.dumps(case.document))}
            for part, draw in case.files.items():
                parts[part] = (part, png(draw()), "image/png")
            response = self.http.post(case.path, files=parts)
        else:
            response = self.http.post(case.path, json=case.document)
        if response.status_code != 200:
            raise CaseError(f"{case.name}: submit answered {response.status_code}: {response.text[:500]}")
        record = self._wait(case.name, response.json()["name"])
        images = []
        for name in record["outputs"]:
            fetched = self.http.get(f"/output/{name}")
            if fetched.status_code != 200:
                raise CaseError(f"{case.name}: /output/{name} answered {fetched.status_code}")
            with Image.open(io.BytesIO(fetched.content)) as opened:
                images.append(opened.convert("RGB"))
        return images

    def _wait(self, case: str, job: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            response = self.http.get("/api/job/status", params={"jobs": job})
            response.raise_for_status()
            record: dict[str, Any] = response.json()[0]
            if record["status"] in TERMINAL:
                if record["status"] != "success":
                    raise CaseError(f"{case}: job {job} ended {record['status']}: {record.get('error')}")
                return record
            time.sleep(0.1)
        raise CaseError(f"{case}: job {job} did not finish in {self.timeout_s:.0f} s")


class CaseError(RuntimeError):
    """A case whose job could not be submitted, failed, or did not finish."""


def output_name(case: Case, index: int) -> str:
    return f"{case.name}-{index}.png"


def references(refs: Path, case: Case) -> list[Path]:
    """The reference images of ``case`` (``img2img-0.png``, not ``img2img-filter-0.png``)."""
    pattern = re.compile(re.escape(case.name) + r"-\d+\.png")
    return sorted(path for path in refs.glob("*.png") if pattern.fullmatch(path.name))


def check(client: ReleaseClient, case: Case, refs: Path, results: Path | None = RESULTS) -> list[Comparison]:
    """Run ``case`` and compare every output with its reference; the images of a failed
    comparison go to ``results``."""
    images = client.run(case)
    comparisons = []
    expected = references(refs, case)
    if len(expected) != len(images) and expected:
        comparisons.append(
            Comparison(case.name, 0.0, 255, f"{len(images)} outputs, {len(expected)} references")
        )
    for index, image in enumerate(images):
        name = output_name(case, index)
        comparison = compare(name, image, refs / name)
        comparisons.append(comparison)
        if results is not None and not comparison.passed(case.min_psnr):
            _keep(results, name, image, refs / name)
    return comparisons


def update(client: ReleaseClient, case: Case, refs: Path) -> int:
    """Run ``case`` and write its outputs as the references; returns how many."""
    images = client.run(case)
    refs.mkdir(parents=True, exist_ok=True)
    for stale in references(refs, case):
        stale.unlink()
    for index, image in enumerate(images):
        image.save(refs / output_name(case, index), optimize=True)
    return len(images)


def _keep(results: Path, name: str, image: Image.Image, reference_path: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    stem = name.removesuffix(".png")
    image.save(results / f"{stem}.actual.png")
    if reference_path.exists():
        with Image.open(reference_path) as opened:
            reference = opened.convert("RGB")
        reference.save(results / f"{stem}.reference.png")
        if reference.size == image.size:
            # The difference scaled up so that a few levels show.
            ImageChops.difference(image, reference).point(lambda level: min(255, level * 16)).save(
                results / f"{stem}.difference.png"
            )


def selected(patterns: list[str]) -> list[Case]:
    if not patterns:
        return list(CASES)
    chosen = [case for case in CASES if any(fnmatch.fnmatch(case.name, p) for p in patterns)]
    if not chosen:
        raise SystemExit(f"no case matches {patterns}; cases: {', '.join(case.name for case in CASES)}")
    return chosen


@contextmanager
def _server(url: str | None) -> Iterator[str]:
    """The server to test: ``url``, or a local stack on the demo models started for the run."""
    if url is not None:
        yield url
        return
    import tempfile

    from service.stack import LocalStack, StackOptions, free_port

    # The stack's processes inherit the environment: its warnings show, not every request.
    os.environ.setdefault("ONNX_WEB_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="release-") as data:
        stack = LocalStack(StackOptions(data_dir=Path(data), port=free_port()))
        stack.start()
        try:
            yield stack.url
        finally:
            stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="case names or patterns (txt2img-*); all when none")
    parser.add_argument("--url", help="a running server; without it a local stack on the demo models starts")
    parser.add_argument("--platform", default="cpu", help="the reference set: refs/<platform>/ (default cpu)")
    parser.add_argument("--refs", type=Path, help="the reference folder (default refs/<platform>/ here)")
    parser.add_argument("--key", help="an API key, for a server with ONNX_WEB_AUTH=keys")
    parser.add_argument("--update", action="store_true", help="write the outputs as the new references")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each job may take")
    args = parser.parse_args(argv)
    cases = selected(args.cases)
    refs = args.refs or REFS / args.platform
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    failed: list[str] = []
    with _server(args.url) as url, httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        client = ReleaseClient(http, args.timeout)
        progress = tqdm(cases, unit="case", file=sys.stderr)
        for case in progress:
            progress.set_postfix_str(case.name)
            try:
                if args.update:
                    tqdm.write(f"{case.name}: {update(client, case, refs)} references written")
                    continue
                for comparison in check(client, case, refs):
                    verdict = "ok  " if comparison.passed(case.min_psnr) else "FAIL"
                    tqdm.write(f"{verdict} {comparison.describe()}")
                    if verdict == "FAIL":
                        failed.append(comparison.name)
            except CaseError as err:
                tqdm.write(f"FAIL {err}")
                failed.append(case.name)
    if failed:
        print(f"{len(failed)} failed: {', '.join(failed)}; images in {RESULTS}/", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
