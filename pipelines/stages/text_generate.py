"""``text-generate``: continue a prompt with a GPT-2 text model; the text is the job's output.

Only the txt2txt route builds this stage (it is not part of onnx-web's chain language, see
``pipelines.stages.ROUTE_ONLY``). Params: ``text_model`` (the model's path below the models
folder, resolved by the api), ``prompt``, ``seed`` and the sampling parameters ``SAMPLING``
(``max_tokens``, ``temperature``, ``top_k``, ``top_p``). One step of progress per token.

The output's metadata has contract §7.3's shape (params, models, sizes of 0 x 0, as no image was
made) plus ``text`` (the prompt and its continuation, what the output file holds) and
``generation`` (token counts and why generation stopped).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.context import StageContext, StageImage, StageText
from pipelines.stages.shared import MAX_SEED
from pipelines.stages.spec import StageType, integer, number, text

#: Longest continuation one request may ask for (the demo's context is 256 tokens, GPT-2's 1024).
MAX_NEW_TOKENS = 1024
#: The sampling parameters ``text-generate`` and ``text-prompt`` share, with transformers' defaults.
SAMPLING = (
    integer("max_tokens", 1, MAX_NEW_TOKENS, 64),
    number("temperature", 0, 5, 1.0),
    integer("top_k", 0, 1000, 50),
    number("top_p", 0, 1, 1.0),
)
UNSIZED = {"width": 0, "height": 0}


def sampling(params: Mapping[str, Any], seed: int) -> Any:
    """The ``Sampling`` of a stage's resolved parameters."""
    from pipelines.text.generate import Sampling

    return Sampling(
        max_new_tokens=int(params["max_tokens"]),
        temperature=float(params["temperature"]),
        top_k=int(params["top_k"]),
        top_p=float(params["top_p"]),
        seed=seed,
    )


def load_text_model(ctx: StageContext, path: str) -> Any:
    """The converted GPT-2 folder at ``path`` below the models folder."""
    from pipelines.text.generate import TextModel

    return TextModel(ctx.models_path / path, ctx.sessions)


def run(ctx: StageContext, params: dict[str, Any], images: list[StageImage]) -> list[StageImage]:
    """Generate the text and record it as the job's output; images pass through."""
    from pipelines.models.layout import read_model_hash

    model = load_text_model(ctx, str(params["text_model"]))
    prompt, seed = str(params["prompt"]), int(params["seed"])
    generated = model.generate(
        prompt, sampling(params, seed), on_token=lambda: ctx.on_step(1), check_cancelled=ctx.check_cancelled
    )
    name = str(params["text_model"])
    metadata = {
        "input_size": UNSIZED,
        "size": UNSIZED,
        "params": {
            "model": name,
            "pipeline": "txt2txt",
            "prompt": prompt,
            "input_prompt": prompt,
            "seed": seed,
            **{key: params[key] for key in ("max_tokens", "temperature", "top_k", "top_p")},
        },
        "models": [{"name": name, "hash": read_model_hash(model.folder), "weight": 1.0}],
        "text": prompt + generated.text,
        "generation": {
            "prompt_tokens": len(generated.prompt_ids),
            "new_tokens": len(generated.new_ids),
            "stop": generated.stop,
        },
    }
    ctx.persist_text([StageText(prompt + generated.text, metadata)])
    return images


STAGE = StageType(
    "text-generate",
    run,
    (
        text("text_model", 1000, required=True),
        text("prompt", 20_000, ""),
        integer("seed", 0, MAX_SEED, 0),
        *SAMPLING,
    ),
    steps=lambda params: int(params["max_tokens"]),
)
