"""Memory estimates follow what dominates a job's peak: attention on CPU, size, tiles, batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.context import StageContext
from pipelines.memory import RUNTIME_BYTES, chain_memory, image_bytes
from pipelines.models.demo import DEMO_UPSCALER
from pipelines.models.registry import ModelRegistry
from pipelines.models.sessions import SessionCache
from pipelines.stages import upscale_stable_diffusion
from tests.unit.pipelines.images import gradient
from tests.unit.pipelines.resident import peak_rise
from tests.unit.pipelines.resolved import RESOLVED, run_stage

GIB = 1024**3


def entry(
    name: str, stage_type: str, *, tiles: int = 4096, outscale: int = 1, **params: Any
) -> dict[str, Any]:
    image = {"model": "m", "batch": 1, "tiled_vae": False, "vae_tile": 512}
    return {
        "name": name,
        "type": stage_type,
        "params": {**image, **params},
        "tiles": tiles,
        "outscale": outscale,
    }


def txt2img(width: int, height: int, **params: Any) -> dict[str, Any]:
    return entry("txt2img", "source-txt2img", width=width, height=height, **params)


def estimate(
    *stages: dict[str, Any], size: tuple[int, int] = (0, 0), family: str = "sd", weights: int = 0
) -> Any:
    return chain_memory(list(stages), size, model_bytes=lambda _: weights, family=lambda _: family)


def test_the_job_that_killed_a_24_gb_cpu_worker_is_estimated_above_what_it_used() -> None:
    """onnx-web's release test: txt2img 1024x768; the worker reached 23.8 GB before the OOM kill."""
    assert estimate(txt2img(1024, 768)).peak("cpu") > 23.8e9


def test_the_default_size_fits_a_small_cpu_worker() -> None:
    assert estimate(txt2img(512, 512)).peak("cpu") < 6 * GIB


def test_cpu_attention_grows_with_the_square_of_the_pixels_gpu_memory_about_linearly() -> None:
    small, large = estimate(txt2img(512, 512)), estimate(txt2img(1024, 1024))

    assert large.peak("cpu") - small.peak("cpu") > 8 * (
        small.peak("cpu") - estimate(txt2img(256, 256)).peak("cpu")
    )
    assert large.peak("gpu") < 4 * small.peak("gpu")
    assert large.peak("gpu") < large.peak("cpu") / 10


def test_batch_and_weights_add_up() -> None:
    one = estimate(txt2img(512, 512)).peak("cpu")

    assert estimate(txt2img(512, 512, batch=4)).peak("cpu") > 3 * (one - 2 * GIB)
    assert estimate(txt2img(512, 512), weights=GIB).peak("cpu") >= one + 2 * GIB


def test_a_tiling_stage_is_estimated_at_its_tile() -> None:
    whole = estimate(entry("img2img", "blend-img2img", tiles=4096, strength=0.5), size=(2048, 2048))
    tiled = estimate(entry("img2img", "blend-img2img", tiles=512, strength=0.5), size=(2048, 2048))

    assert tiled.stages[0].work_size == (512, 512)
    assert tiled.peak("cpu") < whole.peak("cpu") / 20


def test_sdxl_attends_at_half_size_first() -> None:
    assert (
        estimate(txt2img(1024, 1024), family="sdxl").peak("cpu")
        < estimate(txt2img(1024, 1024)).peak("cpu") / 4
    )


def test_sdxl_img2img_and_inpaint_are_estimated_as_sdxl_txt2img_at_their_size() -> None:
    generated = estimate(txt2img(1024, 1024), family="sdxl")

    for stage_type in ("blend-img2img", "blend-inpaint", "upscale-outpaint"):
        redone = estimate(entry("redo", stage_type, strength=0.5), size=(1024, 1024), family="sdxl")
        assert redone.to_dict() == generated.to_dict()


def test_the_size_follows_the_chain_through_upscaling() -> None:
    memory = estimate(
        txt2img(512, 512),
        entry("upscale", "upscale-resrgan", outscale=4),
        entry("img2img", "blend-img2img", tiles=4096, strength=0.3),
    )

    assert [stage.work_size for stage in memory.stages] == [(512, 512), (512, 512), (2048, 2048)]
    assert memory.largest("cpu") is memory.stages[2]
    assert memory.to_dict() == {"cpu": memory.peak("cpu"), "gpu": memory.peak("gpu")}


def test_resizing_stages_grow_the_image_the_later_stages_hold() -> None:
    """upscale-simple, blend-grid and edit-expand change the size without an ``outscale``."""
    memory = estimate(
        txt2img(128, 128),
        entry("resize", "upscale-simple", method="lanczos", scale=4),
        entry("grid", "blend-grid", width=3, height=2),
        entry("expand", "edit-expand", left=8, right=8, top=0, bottom=16),
        entry("img2img", "blend-img2img", tiles=512, strength=0.3),
    )

    assert [stage.output for stage in memory.stages] == [
        (128, 128),
        (512, 512),
        (1536, 1024),
        (1552, 1040),
        (1552, 1040),
    ]
    assert memory.largest_output() is memory.stages[3]
    # The tiled img2img works on its tile but holds the whole image.
    assert memory.stages[4].work_size == (512, 512)
    # A resize holds the image it receives and the one it makes.
    assert memory.stages[1].peak["cpu"] == RUNTIME_BYTES + image_bytes((128, 128)) + image_bytes((512, 512))


def test_face_correction_grows_the_image_by_its_face_outscale() -> None:
    """What the correction stages make, not the entry's outscale, which they never read: a chain of
    them could otherwise grow its image past the output limit unseen."""
    memory = estimate(
        txt2img(128, 128),
        entry("faces", "correct-codeformer", face_outscale=4),
        entry("again", "correct-gfpgan", face_outscale=2),
    )

    assert [stage.output for stage in memory.stages] == [(128, 128), (512, 512), (1024, 1024)]


def test_a_scale_of_one_keeps_the_size() -> None:
    memory = estimate(txt2img(64, 64), entry("resize", "upscale-simple", method="bilinear", scale=1))

    assert memory.stages[1].output == (64, 64)


def test_a_tiled_batch_is_estimated_at_the_batch_of_one_each_tile_runs() -> None:
    # A 1024x1024 img2img in 512-px tiles makes its batch one tiled pass after another.
    def img2img(batch: int, tiles: int) -> int:
        stage = entry("img2img", "blend-img2img", tiles=tiles, batch=batch, strength=0.5, steps=4)
        return int(estimate(stage, size=(1024, 1024)).peak("cpu"))

    assert img2img(5, 512) == img2img(1, 512)
    # Untiled, the batch runs at once and counts.
    assert img2img(5, 4096) > img2img(1, 4096)


def test_the_sd_x4_upscaler_is_estimated_above_what_its_largest_tile_uses(
    models_path: Path, sessions: SessionCache
) -> None:
    """Its latents are its input's pixels, not an eighth of them: one 128-pixel tile is 16,384
    latent positions for its UNet's and its VAE's attention (estimated at 0.1 GiB above the runtime,
    where the demo model's run rose by 2.1 GiB, and by 4.2 GiB with ONNX Runtime's CPU arena)."""
    params = {
        **RESOLVED,
        "upscale_model": DEMO_UPSCALER,
        "prompt": "sharp",
        "prompt_index": 0,
        "steps": 1,
        "outscale": 4,
        "stage_name": "upscale",
    }
    params = {**params, **upscale_stable_diffusion.STAGE.resolve(params)}
    stage = {**entry("upscale", "upscale-stable-diffusion", tiles=128, outscale=4), "params": params}
    registry = ModelRegistry(models_path)
    estimated = chain_memory([stage], (128, 128), model_bytes=registry.model_bytes, family=registry.family)
    source = {"source:upscale": gradient(128, 128)}
    ctx = StageContext(models_path=models_path, sessions=sessions, inputs=source)

    with peak_rise() as rise:
        (result,) = run_stage(upscale_stable_diffusion.STAGE, ctx, params, [])

    assert result.image.size == (512, 512)
    # What the estimate adds to the runtime's own memory must cover what the run added.
    assert estimated.peak("cpu") - RUNTIME_BYTES >= rise[0], f"the run rose by {rise[0] / 2**30:.1f} GiB"
