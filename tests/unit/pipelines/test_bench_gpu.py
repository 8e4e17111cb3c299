"""``bench.gpu``'s rows that run on the demo model without a GPU (the rest needs full-size weights)."""

from __future__ import annotations

from bench.gpu import Timer, time_img2img
from pipelines.diffusion.model import DiffusionModel


def test_the_img2img_row_times_both_paths_and_says_which_ran(demo_model: DiffusionModel) -> None:
    row = time_img2img(demo_model, 64, 4, Timer("cpu"))
    assert row["graphs_taken"] is False  # no GPU here: both timings are of the sessions
    assert row["graphs"]["runs"] == row["sessions"]["runs"] == 3
    assert row["max_pixel_diff_graphs_vs_sessions"] == 0
