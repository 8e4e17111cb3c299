"""The release references (``release.py``) on the demo models and the CPU worker."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
from PIL import Image

from pipelines.imageops.correct import detect_faces
from tests.e2e.images import gradient
from tests.e2e.release import CASES, REFS, Case, ReleaseClient, check, psnr, references

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_makes_the_images_it_made_before(client: httpx.Client, case: Case) -> None:
    comparisons = check(ReleaseClient(client), case, REFS / "cpu")
    failed = [comparison.describe() for comparison in comparisons if not comparison.passed(case.min_psnr)]
    assert comparisons and not failed, (
        f"{failed}; the images are in test-results/release/. If the change was meant to move these "
        "pixels, write new references with `make refs` and commit them."
    )


def test_psnr_is_symmetric_and_infinite_only_for_equal_images() -> None:
    first = gradient(32, 32)
    second = first.point(lambda level: min(255, level + 2))
    assert psnr(first, first) == (math.inf, 0)
    forward, backward = psnr(first, second), psnr(second, first)
    assert forward == backward and forward[1] == 2 and 40 < forward[0] < math.inf


def test_a_case_finds_only_its_own_references(tmp_path: Path) -> None:
    for name in ("img2img-0.png", "img2img-1.png", "img2img-filter-0.png", "img2img-x.png"):
        gradient(8, 8).save(tmp_path / name)
    case = next(case for case in CASES if case.name == "img2img")
    assert [path.name for path in references(tmp_path, case)] == ["img2img-0.png", "img2img-1.png"]
    assert len({case.name for case in CASES}) == len(CASES), "case names are unique"


def test_a_face_correction_case_has_a_face_for_its_corrector_to_find() -> None:
    """A corrector restores only the faces the detector finds: an input without one leaves it
    unused, and its reference would not move whatever the face model did."""
    correcting = [case for case in CASES if case.document.get("upscale", {}).get("faces")]
    assert correcting, "no case corrects faces"
    for case in correcting:
        assert case.document["upscale"].get("upscaleOrder") == "correction-first", (
            f"{case.name}: the demo upscaler's random weights leave no face to find after it"
        )
        source: Image.Image = case.files["source"]()
        assert detect_faces(source), f"{case.name}: no face in its source"
