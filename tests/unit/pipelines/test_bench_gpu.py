"""``bench.gpu``'s rows that run on the demo model without a GPU (the rest needs full-size weights)."""

from __future__ import annotations

from bench.gpu import Timer, family_scaling, scaling_lines, time_img2img
from pipelines.diffusion.model import DiffusionModel


def test_the_img2img_row_times_both_paths_and_says_which_ran(demo_model: DiffusionModel) -> None:
    row = time_img2img(demo_model, 64, 4, Timer("cpu"))
    assert row["graphs_taken"] is False  # no GPU here: both timings are of the sessions
    assert row["graphs"]["runs"] == row["sessions"]["runs"] == 3
    assert row["max_pixel_diff_graphs_vs_sessions"] == 0


def test_batch_scaling_gives_each_kernel_familys_gain_per_image() -> None:
    one_job = {
        "jobs": 1,
        "rows": 2,
        "ms_per_call_by_family": {"convolution": 2.0, "attention": 1.0, "copy": 0.1},
    }
    four_jobs = {"jobs": 4, "rows": 8, "ms_per_call_by_family": {"convolution": 7.2, "attention": 2.0}}
    families = family_scaling(one_job, four_jobs)
    assert list(families) == ["convolution", "attention", "copy"]  # slowest per image at the batch first
    assert families["convolution"]["ms_per_image_large"] == 1.8
    assert abs(families["convolution"]["gain"] - 2.0 / 1.8) < 1e-12
    assert families["attention"]["gain"] == 2.0
    assert families["copy"]["ms_per_image_large"] == 0.0 and families["copy"]["gain"] == float("inf")


def test_batch_scaling_rows_print_each_shape_and_family() -> None:
    def shape(jobs: int, ms: float) -> dict[str, object]:
        return {
            "jobs": jobs,
            "rows": 2 * jobs,
            "call": {"median_ms": ms},
            "kernel_ms_per_call": ms - 0.5,
            "ms_per_call_by_family": {"convolution": ms - 0.5},
        }

    small, large = shape(1, 7.0), shape(4, 20.0)
    scaling = {"1": small, "4": large, "per_image_gain": 1.4, "families": family_scaling(small, large)}
    lines = scaling_lines(scaling)
    assert lines[0].startswith("UNet replay, batch 2 / 8 (ms per call): 7.00 / 20.00")
    assert "per-image gain 1.40x" in lines[0]
    assert lines[2].split() == ["convolution", "6.500", "4.875", "1.33"]
    assert scaling_lines(None) == []
