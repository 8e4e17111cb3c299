"""``bench.families``: every family mode builds through the api's chain and agrees with its diffusers run.

A tiny run (two steps) of each side once: the timings are the benchmark's business, but a mode
whose two sides do different work would make its figures meaningless.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.families import FAMILY_MODES, build_family_modes
from bench.modes import BASE_MODES, Ours, api_guidance, max_difference, select_modes
from tests.unit.pipelines.reference import MAX_LEVEL_DIFF

SIZE, STEPS = 128, 2


@pytest.fixture(scope="module")
def ours(models_path: Path) -> Ours:
    return Ours(models_path)


@pytest.mark.parametrize("name", FAMILY_MODES)
def test_a_family_mode_matches_its_diffusers_pipeline(ours: Ours, name: str) -> None:
    [mode] = build_family_modes(ours, SIZE, STEPS, *api_guidance(ours, SIZE, STEPS), (name,))
    assert mode.name == name
    difference = max_difference(mode.ours(), mode.finish(mode.reference()))
    # The panorama route denoises its image (non-local means averages each pixel with up to 441
    # similar ones), which can turn rounding apart by the usual limit into one more level.
    limit = MAX_LEVEL_DIFF + (1 if name == "panorama" else 0)
    assert difference is not None and difference <= limit


def test_families_only_and_select_pick_the_modes(models_path: Path) -> None:
    only = select_modes(models_path, SIZE, STEPS, "only", ("panorama", "txt2img"))
    assert [mode.name for mode in only] == ["panorama"]
    mixed = select_modes(models_path, SIZE, STEPS, "also", ("pix2pix", "txt2img"))
    assert [mode.name for mode in mixed] == ["txt2img", "pix2pix"]
    # The base modes only without --families (upscale is left out here: it needs the demo upscalers).
    base = select_modes(
        models_path, SIZE, STEPS, "no", tuple(set(BASE_MODES) - {"upscale"} | {"sdxl-txt2img"})
    )
    assert [mode.name for mode in base] == [name for name in BASE_MODES if name != "upscale"]
    with pytest.raises(ValueError, match="unknown modes"):
        select_modes(models_path, SIZE, STEPS, "also", ("lcm",))
