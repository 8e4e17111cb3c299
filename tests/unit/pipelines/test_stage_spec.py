"""The stage declarations: one home per stage type, checked at submit and again in the worker."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipelines.stages import NAMES, ROUTE_ONLY, STAGES
from pipelines.stages.spec import ParamError, StageType, choice, color, integer, number, text
from tests.unit.pipelines.resolved import IMAGE

STAGES_DIR = Path(__file__).resolve().parents[3] / "pipelines" / "stages"


def test_param_rules_refuse_instead_of_clamping() -> None:
    assert integer("n", 1, 8).check("n", 3.0) == 3 and integer("n", 1, 8).check("n", "4") == 4
    assert number("f", 0, 2).check("f", 2) == 2.0 and text("t", 5).check("t", "x") == "x"
    assert choice("c", ("a", "b"), "a").check("c", "b") == "b" and color("k", "white").check("k", "#ff0000")
    for param, value, message in (
        (integer("n", 1, 8), True, "must be an integer from 1 to 8"),
        (integer("n", 1, 8), 9, "must be an integer from 1 to 8, got 9"),
        # As sent: a query string's "2000", not the 2000.0 it was read as.
        (integer("n", 1, 8), "2000", "must be an integer from 1 to 8, got 2000$"),
        (integer("n", 1, 8), 2.5, "must be an integer"),
        (number("f", 0, 1), float("nan"), "must be a number"),
        (number("f", 0, 1), -0.5, "must be a number from 0 to 1"),
        (text("t", 3), "long", "must be at most 3 characters"),
        (text("t", 3), 7, "must be a string"),
        (choice("c", ("a", "b"), "a"), "z", "must be one of a, b"),
        (color("k", "white"), "no-such-colour", "must be a colour"),
    ):
        with pytest.raises(ParamError, match=message) as caught:
            param.check("stages[0].params.x", value)
        assert caught.value.field == "stages[0].params.x"


def test_resolve_applies_declared_defaults_and_names_required_values() -> None:
    stage = STAGES["reduce-crop"]
    assert stage.resolve({"width": 4, "height": 5}) == {"left": 0, "top": 0, "width": 4, "height": 5}
    with pytest.raises(ParamError, match="is required by reduce-crop") as caught:
        stage.resolve({"width": 4}, "stages[2].params")
    assert caught.value.field == "stages[2].params.height"


def test_the_worker_refuses_a_stored_stage_missing_a_declared_value() -> None:
    """No silent defaults after the api: an incomplete stored chain is a bug, said loudly."""
    with pytest.raises(ParamError, match=r"upscale-simple\.scale: is missing from the stored chain"):
        STAGES["upscale-simple"].load({"method": "lanczos"})
    # Every group value but one: the one left out is named, even one that may be stored as null.
    for missing in ("steps", "negative_prompt"):
        stored = {key: value for key, value in IMAGE.items() if key != missing}
        with pytest.raises(ParamError, match=f"source-txt2img.{missing}: is missing from the stored chain"):
            STAGES["source-txt2img"].load({**stored, "prompt_index": 0})
    with pytest.raises(ParamError, match=r"source-txt2img\.prompt_index: is missing from the stored chain"):
        STAGES["source-txt2img"].load(IMAGE)
    with pytest.raises(ParamError, match=r"source-txt2img\.steps: must be an integer, got 2\.5"):
        STAGES["source-txt2img"].load({**IMAGE, "prompt_index": 0, "steps": 2.5})
    assert STAGES["upscale-simple"].load({"method": "lanczos", "scale": 2, "extra": 1})["scale"] == 2.0


def test_every_stage_module_declares_its_stages_and_the_registry_lists_them() -> None:
    """A new stage type is one module plus one registry line: a module that declares none is a stray."""
    declared = set()
    for path in sorted(STAGES_DIR.glob("*.py")):
        if path.stem in ("__init__", "spec", "shared"):
            continue
        tree = ast.parse(path.read_text())
        names = [
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", "") == "StageType"
        ]
        assert names, f"{path.name} declares no StageType"
        declared.update(names)
    assert all(isinstance(stage, StageType) for stage in STAGES.values())
    # txt2txt's text-generate is a stage of its route only, not of the chain language.
    assert set(STAGES) - ROUTE_ONLY < NAMES and set(STAGES) >= ROUTE_ONLY and len(STAGES) == 31


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_declaration_is_consistent(name: str) -> None:
    stage = STAGES[name]
    assert stage.name == name and callable(stage.run)
    for param in stage.params:
        if param.default is not None:
            assert param.check(name, param.default) == param.default, f"{name}.{param.name}: bad default"
        assert param.schema(), param.name
    if stage.model is not None:
        assert "upscale" in stage.groups, f"{name} runs a model but does not read the upscale group"
