"""The model-based source filters: ONNX against torch, post-processing, decoders on hand-made maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from pipelines.imageops.ade20k import ADE20K_PALETTE
from pipelines.imageops.annotators import (
    ANNOTATOR_MODELS,
    AnnotatorMissing,
    Annotators,
    decode_lines,
    depth_image,
    draw_lines,
    installed_models,
    normal_image,
    run_openpose,
    run_segment,
    scribble,
)
from pipelines.imageops.filters import (
    FILTERS_AVAILABLE,
    FilterUnavailable,
    apply_source_filter,
    runnable_filters,
)
from pipelines.imageops.pose import COLOURS, LIMB_PAFS, LIMBS, draw_pose, find_people
from pipelines.models.annotator_networks import HED_PORT_PREFIXES, Hed
from pipelines.models.annotators import FIXED_SIZES, convert_annotator, load_annotator
from pipelines.models.demo_annotators import (
    DEMO_ANNOTATORS,
    DEMO_HED,
    DEMO_MLSD,
    build_demo_annotators,
    demo_annotator,
)
from pipelines.models.layout import ONNX_FILE
from tests.unit.pipelines.contexts import Sessions, stage_context

#: A size off every model's grid (not a multiple of 8, not square), for the size checks.
ODD_SIZE = (150, 98)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("annotators")
    build_demo_annotators(path)
    return path


def source(size: tuple[int, int] = ODD_SIZE, seed: int = 0) -> Image.Image:
    """A smooth image with a bright square, so edges, lines and depth have something to find."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size[0])[None, :, None]
    y = np.linspace(0, 1, size[1])[:, None, None]
    pixels = np.concatenate(
        [
            np.broadcast_to(x, (size[1], size[0], 1)),
            np.broadcast_to(y, (size[1], size[0], 1)),
            rng.random((size[1], size[0], 1)),
        ],
        axis=2,
    )
    pixels[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = 1.0
    return Image.fromarray((pixels * 255).astype(np.uint8))


def torch_outputs(model: str, image: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = demo_annotator(model)(torch.from_numpy(image))
    return [output.numpy() for output in (outputs if isinstance(outputs, tuple) else (outputs,))]


def onnx_outputs(path: Path, image: np.ndarray) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image})


@pytest.mark.parametrize("model", sorted(DEMO_ANNOTATORS))
def test_the_onnx_graph_computes_what_the_torch_module_does(models: Path, model: str) -> None:
    side = FIXED_SIZES.get(model)
    height, width = (side, side) if side else (96, 80)  # the others take any size; not square here
    image = np.random.default_rng(3).random((1, 3, height, width), dtype=np.float32)
    expected = torch_outputs(model, image)
    actual = onnx_outputs(models / "filter" / model / ONNX_FILE, image)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.shape == want.shape
        if model == "segment":  # class indices: the argmax may only differ on a near-tie
            assert np.mean(got == want) > 0.999
            assert len(np.unique(want)) > 1, "the demo model paints more than one class"
        else:
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
            assert want.std() > 0, f"{model}'s demo output is constant, so the comparison proves little"


def test_every_demo_annotator_is_installed_and_hashed(models: Path) -> None:
    assert installed_models(models) == tuple(sorted(DEMO_ANNOTATORS))
    assert set(ANNOTATOR_MODELS.values()) == set(DEMO_ANNOTATORS)
    for model in DEMO_ANNOTATORS:
        assert len((models / "filter" / model / "hash.txt").read_text().strip()) == 10


@pytest.mark.parametrize("name", sorted(ANNOTATOR_MODELS))
def test_each_filter_returns_an_rgb_image_of_the_input_size(models: Path, name: str) -> None:
    ctx = stage_context(models_path=models)
    result = apply_source_filter(
        name, source(), np.random.default_rng(0), Annotators(ctx.models_path, ctx.sessions)
    )
    assert result.mode == "RGB" and result.size == ODD_SIZE
    pixels = np.asarray(result)
    if name in ("scribble", "mlsd"):
        assert set(np.unique(pixels)) <= {0, 255}
    if name in ("depth", "hed", "scribble", "mlsd"):
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    if name == "segment":
        assert {tuple(colour) for colour in pixels.reshape(-1, 3)} <= {
            tuple(colour) for colour in ADE20K_PALETTE
        }
    if name == "depth":  # scaled to the full range at the network's size, then resized
        assert int(pixels.max()) - int(pixels.min()) > 200


def test_a_model_based_filter_needs_its_model(tmp_path: Path) -> None:
    with pytest.raises(FilterUnavailable, match="needs its annotator model"):
        apply_source_filter("hed", source(), np.random.default_rng(0))
    with pytest.raises(AnnotatorMissing, match=r"filter/hed/model\.onnx"):
        apply_source_filter("scribble", source(), np.random.default_rng(0), Annotators(tmp_path, Sessions()))
    with pytest.raises(FilterUnavailable, match="is not built"):
        apply_source_filter("face", source(), np.random.default_rng(0), Annotators(tmp_path, Sessions()))


def test_the_runnable_filters_follow_the_installed_models() -> None:
    assert runnable_filters(()) == FILTERS_AVAILABLE
    assert runnable_filters(("hed",)) == ("canny", "gaussian", "hed", "noise", "none", "scribble")
    everything = runnable_filters(tuple(DEMO_ANNOTATORS))
    assert "face" not in everything and len(everything) == 11


# --- post-processing on hand-made maps ------------------------------------------------------------


def test_depth_is_scaled_to_the_full_grey_range() -> None:
    depth = np.array([[2.0, 4.0], [6.0, 10.0]], dtype=np.float32)
    assert depth_image(depth).tolist() == [[0, 63], [127, 255]]
    assert depth_image(np.full((2, 2), 3.0)).max() == 0


def test_a_depth_ramp_gives_normals_tilted_along_it() -> None:
    # Depth (nearness) rising to the right: x slope positive, none along y.
    depth = np.tile(np.linspace(0, 100, 32, dtype=np.float32), (24, 1))
    normal = normal_image(depth).astype(int)
    inside = normal[4:-4, 8:-4]
    assert (inside[..., 0] > 150).all(), "R: the surface turns towards +x"
    assert (np.abs(inside[..., 1] - 127) <= 1).all(), "G: no slope along y"
    assert (inside[..., 2] > 127).all(), "B: still facing the viewer"
    # The far tenth of the range is background: flat, facing the viewer.
    assert (np.abs(normal[:, :3] - [127, 127, 255]) <= 1).all()
    down = normal_image(depth.T.copy()).astype(int)
    assert (down[8:-4, 4:-4, 1] > 150).all() and (np.abs(down[8:-4, 4:-4, 0] - 127) <= 1).all()


def test_scribble_turns_a_soft_edge_into_one_binary_stroke() -> None:
    edges = np.zeros((64, 64), dtype=np.uint8)
    edges[:, 28:36] = np.array([60, 120, 200, 255, 255, 200, 120, 60], dtype=np.uint8)
    strokes = scribble(edges)
    assert set(np.unique(strokes)) == {0, 255}
    row = strokes[32]
    assert row[31] == 255 and row[:20].max() == 0 and row[44:].max() == 0
    assert scribble(np.full((32, 32), 40, dtype=np.uint8)).max() == 0, "weak edges leave no stroke"


def tp_map(
    segments: list[tuple[int, int, float, float, float, float]], size: tuple[int, int] = (32, 48)
) -> np.ndarray:
    """A TP map with a confident centre (logit 6) at each ``(x, y)`` and its end displacements."""
    tpmap = np.zeros((5, size[0], size[1]), dtype=np.float32)
    tpmap[0] = -8.0
    for x, y, dx0, dy0, dx1, dy1 in segments:
        tpmap[:, y, x] = (6.0, dx0, dy0, dx1, dy1)
    return tpmap


def test_an_mlsd_map_with_one_segment_decodes_to_it() -> None:
    lines = decode_lines(tp_map([(20, 10, -6.0, 2.0, 6.0, -2.0)]))
    np.testing.assert_allclose(lines, [[14.0, 12.0, 26.0, 8.0]])


def test_mlsd_drops_weak_and_zero_length_centres_and_keeps_the_strongest_first() -> None:
    tpmap = tp_map([(5, 5, -3.0, 0.0, 3.0, 0.0), (30, 20, 0.0, -4.0, 0.0, 4.0), (40, 8, 0.0, 0.0, 0.0, 0.0)])
    tpmap[0, 20, 30] = 9.0
    tpmap[0, 25, 10] = -1.0  # sigmoid 0.27: above the score threshold, but no length
    lines = decode_lines(tpmap)
    np.testing.assert_allclose(lines, [[30.0, 16.0, 30.0, 24.0], [2.0, 5.0, 8.0, 5.0]])
    tpmap[0, 5, 5] = -3.0  # sigmoid 0.047 < 0.1
    assert len(decode_lines(tpmap)) == 1


def test_mlsd_segments_are_drawn_scaled_to_the_image() -> None:
    canvas = draw_lines(np.array([[2.0, 5.0, 8.0, 5.0]]), (40, 30), (2.0, 2.0))
    assert canvas[10, 4:17].min() == 255 and canvas.sum() == 255 * 13


def pose_maps_with_arm(
    size: tuple[int, int] = (96, 64),
) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, int]]]:
    """Heatmaps and PAFs of one person: neck, right shoulder, elbow and wrist along a line."""
    width, height = size
    points = {1: (20, 30), 2: (40, 30), 3: (60, 30), 4: (80, 30)}
    heatmaps = np.zeros((height, width, 19), dtype=np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    for part, (x, y) in points.items():
        heatmaps[:, :, part] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.0**2))
    pafs = np.zeros((height, width, 38), dtype=np.float32)
    for limb in (0, 2, 3):  # neck-shoulder, shoulder-elbow, elbow-wrist: all pointing +x
        start, end = points[LIMBS[limb][0]], points[LIMBS[limb][1]]
        paf_x, _ = LIMB_PAFS[limb]
        pafs[start[1] - 2 : start[1] + 3, start[0] : end[0] + 1, paf_x] = 1.0
    return heatmaps, pafs, points


def test_openpose_maps_with_one_arm_give_one_person_with_its_keypoints() -> None:
    heatmaps, pafs, points = pose_maps_with_arm()
    keypoints, people = find_people(heatmaps, pafs)
    assert len(people) == 1
    person = people[0]
    assert person.count == 4
    seen = {
        part: tuple(keypoints[index, :2].astype(int)) for part, index in enumerate(person.parts) if index >= 0
    }
    assert seen == points


def test_openpose_draws_each_limb_in_its_colour() -> None:
    heatmaps, pafs, points = pose_maps_with_arm()
    keypoints, people = find_people(heatmaps, pafs)
    canvas = draw_pose((96, 64), keypoints, people)
    for limb in (0, 2, 3):
        start, end = points[LIMBS[limb][0]], points[LIMBS[limb][1]]
        middle = ((start[0] + end[0]) // 2, start[1])
        expected = np.array(COLOURS[limb]) * 0.6
        assert np.abs(canvas[middle[1], middle[0]] - expected).max() <= 2, f"limb {limb}"
    assert tuple(canvas[30, 20 - 3]) == COLOURS[1], "the neck's dot, outside every limb"
    assert canvas[5:20].max() == 0 and canvas[45:].max() == 0, "nothing drawn off the arm"


def test_openpose_finds_the_arm_at_the_networks_scale_and_draws_it_on_the_image() -> None:
    """The image is scaled to 368 high and padded to the stride; the skeleton lands back on it."""
    map_points = {1: (20, 23), 2: (40, 23), 3: (60, 23), 4: (80, 23)}  # 1/8 of (736, 368)
    heatmaps = np.zeros((1, 19, 46, 92), dtype=np.float32)
    ys, xs = np.mgrid[0:46, 0:92]
    for part, (x, y) in map_points.items():
        heatmaps[0, part] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 2.0)
    pafs = np.zeros((1, 38, 46, 92), dtype=np.float32)
    for limb in (0, 2, 3):
        start, end = map_points[LIMBS[limb][0]], map_points[LIMBS[limb][1]]
        pafs[0, LIMB_PAFS[limb][0], start[1] - 1 : start[1] + 2, start[0] : end[0] + 1] = 1.0

    class FixedMaps:
        def run(self, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            assert feeds["image"].shape == (1, 3, 368, 736)
            return [pafs, heatmaps]

    drawn = np.asarray(run_openpose(FixedMaps(), source((192, 96))))
    assert drawn.shape == (96, 192, 3)

    def on_image(x: float, y: float) -> tuple[int, int]:  # map cell centre -> image pixel
        return round((x * 8 + 3.5) * 192 / 736), round((y * 8 + 3.5) * 96 / 368)

    neck_x, neck_y = on_image(*map_points[1])
    assert tuple(drawn[neck_y, neck_x - 3]) == COLOURS[1], "the neck's dot, left of every limb"
    for limb in (0, 2, 3):
        (xa, ya), (xb, yb) = (on_image(*map_points[part]) for part in LIMBS[limb])
        middle = drawn[(ya + yb) // 2, (xa + xb) // 2]
        assert np.abs(middle - np.array(COLOURS[limb]) * 0.6).max() <= 2, f"limb {limb}"


def test_limbs_without_paf_support_join_nobody() -> None:
    heatmaps, pafs, _ = pose_maps_with_arm()
    keypoints, people = find_people(heatmaps, np.zeros_like(pafs))
    assert len(keypoints) == 4 and people == []


def test_a_class_map_is_painted_with_the_ade20k_palette() -> None:
    class FixedClasses:
        def get_inputs(self) -> list[object]:
            return [type("Input", (), {"shape": [1, 3, 4, 4]})()]

        def run(self, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            assert feeds["image"].shape == (1, 3, 4, 4)
            return [np.array([[[0, 0, 2, 2], [0, 0, 2, 2], [12, 12, 149, 149], [12, 12, 149, 149]]])]

    painted = np.asarray(run_segment(FixedClasses(), source((8, 8))))
    assert tuple(painted[0, 0]) == (120, 120, 120)  # wall
    assert tuple(painted[0, 7]) == (6, 230, 230)  # sky
    assert tuple(painted[7, 0]) == (150, 5, 61)  # person
    assert tuple(painted[7, 7]) == (92, 0, 255)  # the last class


# --- converting real checkpoints ------------------------------------------------------------------


def test_a_hed_checkpoint_in_the_public_ports_names_converts(tmp_path: Path) -> None:
    reference = demo_annotator("hed")
    ours_to_port = {ours: port for port, ours in HED_PORT_PREFIXES.items() if port.startswith("net")}
    renamed = {}
    for key, value in reference.state_dict().items():
        prefix = next(p for p in ours_to_port if key.startswith(p))
        renamed[ours_to_port[prefix] + key[len(prefix) :]] = value
    checkpoint = tmp_path / "network-bsds500.pth"
    torch.save(renamed, checkpoint)
    config = {"widths": list(DEMO_HED.widths), "depths": list(DEMO_HED.depths)}
    path = convert_annotator("hed", checkpoint, tmp_path / "models", config)
    image = np.random.default_rng(5).random((1, 3, 40, 56), dtype=np.float32)
    (expected,) = torch_outputs("hed", image)
    (actual,) = onnx_outputs(path, image)
    assert np.abs(actual - expected).max() <= 1e-4


def test_a_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "mlsd.pth"
    torch.save(demo_annotator("mlsd").state_dict(), checkpoint)
    with pytest.raises(ValueError, match="not a mlsd checkpoint of this config"):
        load_annotator("mlsd", checkpoint)  # the full-size config
    module = load_annotator(
        "mlsd",
        checkpoint,
        {"stem": DEMO_MLSD.stem, "groups": [list(g) for g in DEMO_MLSD.groups], "decoder": DEMO_MLSD.decoder},
    )
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(module(image), demo_annotator("mlsd")(image))


def test_the_full_size_hed_has_vgg16s_convolutions() -> None:
    convs = [
        layer
        for layer in Hed().modules()
        if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (3, 3)
    ]
    assert len(convs) == 13 and convs[-1].out_channels == 512
