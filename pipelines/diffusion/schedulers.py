"""The 16 schedulers of onnx-web, by their API names, built from a model's scheduler config.

The api imports ``SCHEDULER_NAMES`` to validate requests, so this module names the diffusers
classes as strings and imports diffusers only inside the functions that build schedulers.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: API name -> diffusers scheduler class, in onnx-web's order (contract §5.7).
SCHEDULER_CLASSES: Mapping[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "deis-multi": "DEISMultistepScheduler",
    "dpm-multi": "DPMSolverMultistepScheduler",
    "dpm-sde": "DPMSolverSDEScheduler",
    "dpm-single": "DPMSolverSinglestepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "ipndm": "IPNDMScheduler",
    "k-dpm-2-a": "KDPM2AncestralDiscreteScheduler",
    "k-dpm-2": "KDPM2DiscreteScheduler",
    "lcm": "LCMScheduler",
    "lms-discrete": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc-multi": "UniPCMultistepScheduler",
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULER_CLASSES)
#: Names onnx-web's own clients send that are not on the list, and the scheduler they mean. The api
#: records and runs the scheduler's own name; only names a client is known to send belong here.
SCHEDULER_ALIASES: Mapping[str, str] = {
    # The GUI's built-in "base SD v1.5" profiles; onnx-web itself swaps it for the first name, ddim.
    "deis": "deis-multi",
}
DEFAULT_SCHEDULER = "ddim"
#: What a UNet predicts unless its scheduler config says otherwise: the noise.
EPSILON = "epsilon"


#: Schedulers that read no ``prediction_type``: they run only models that predict the noise.
NOISE_PREDICTION_ONLY = frozenset({"ipndm"})
#: Schedulers without ``add_noise``: they cannot start from a noised image (img2img, inpainting).
NO_IMAGE_START = frozenset({"ipndm"})


def prediction_type(model_dir: Path) -> str | None:
    """What a model's UNet predicts (``epsilon``, ``v_prediction``), from its scheduler config;
    ``None`` where the folder does not say."""
    try:
        config = load_scheduler_config(model_dir)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    value = config.get("prediction_type", EPSILON) if isinstance(config, dict) else None
    return value if isinstance(value, str) else None


def load_scheduler_config(model_dir: Path) -> dict[str, Any]:
    """Read ``<model>/scheduler/scheduler_config.json``."""
    config: dict[str, Any] = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    return config


def make_scheduler(name: str, config: Mapping[str, Any], *, seed: int | None = None) -> Any:
    """Build scheduler ``name`` from a model's scheduler config.

    ``seed`` seeds the Brownian noise of ``dpm-sde``, whose ``step`` takes no generator and
    would otherwise draw a random seed, so the same request could not give the same image.
    The config's ``prediction_type`` (``v_prediction`` for SD 2.x 768-v models) carries over to
    every scheduler; one that cannot read it (ipndm) is refused for a model that does not
    predict the noise, rather than stepping on a velocity as if it were noise.
    """
    import diffusers

    if name not in SCHEDULER_CLASSES:
        raise ValueError(f"unknown scheduler {name!r}: expected one of {', '.join(SCHEDULER_NAMES)}")
    scheduler_class = getattr(diffusers, SCHEDULER_CLASSES[name])
    accepted = inspect.signature(scheduler_class.__init__).parameters
    prediction = config.get("prediction_type", EPSILON)
    if prediction != EPSILON and "prediction_type" not in accepted:
        raise ValueError(f"scheduler {name!r} cannot run a model predicting {prediction!r}: choose another")
    overrides: dict[str, Any] = {}
    if seed is not None and "noise_sampler_seed" in accepted:
        overrides["noise_sampler_seed"] = seed
    return scheduler_class.from_config(dict(config), **overrides)


def step_arguments(scheduler: Any, *, eta: float, generator: Any) -> dict[str, Any]:
    """The keyword arguments of ``scheduler.step`` that it accepts: ``eta`` (DDIM) and ``generator``.

    Matches diffusers' ``prepare_extra_step_kwargs``: ancestral and stochastic schedulers draw
    their noise from ``generator``, so a seeded generator makes them reproducible.
    """
    accepted = inspect.signature(scheduler.step).parameters
    arguments: dict[str, Any] = {}
    if "eta" in accepted:
        arguments["eta"] = eta
    if "generator" in accepted:
        arguments["generator"] = generator
    return arguments


def require_add_noise(scheduler: Any, name: str) -> None:
    """Refuse schedulers that cannot noise a starting image (ipndm has no ``add_noise``)."""
    if not hasattr(scheduler, "add_noise"):
        raise ValueError(f"scheduler {name!r} cannot start from an image: choose another scheduler")
