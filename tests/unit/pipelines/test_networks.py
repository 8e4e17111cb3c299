"""LoRAs and textual inversions blended into the demo model in memory, against diffusers' own loaders.

Each test makes its networks here: random kohya-format LoRA/LoHA and embedding files for the
demo model's modules, in a models folder of its own that links to the demo model.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipelines.diffusion.model import (
    DiffusionModel,
    Generation,
    Run,
    encode_text,
    file_hash,
    load_model,
    load_tokenizer,
)
from pipelines.diffusion.networks import (
    LORA_PREFIXES,
    TOKENIZERS,
    FusedGraphError,
    graph_weights,
    inversion_tokenizer,
    inversion_vectors,
    lora_deltas,
    network_tensors,
    prompt_blend,
    unknown_networks,
    unplaced_weights,
)
from pipelines.diffusion.prompt import parse_prompt, token_windows
from pipelines.diffusion.txt2img import txt2img
from pipelines.gpu.optimize import COMPONENT_TYPES, optimize_component
from pipelines.gpu.runtime import cuda_available
from pipelines.models.demo import DEMO_MODELS, DEMO_SDXL, demo_unet
from pipelines.models.demo import torch_parts as demo_torch_parts
from pipelines.models.demo_networks import (
    ALPHA,
    DEMO_INVERSION,
    DEMO_LORA,
    RANK,
    random_lora,
    trained_modules,
)
from pipelines.models.layout import GPU_MARKER, ONNX_FILE
from pipelines.models.registry import ModelRegistry
from pipelines.models.sessions import CPU_PROVIDER, CUDA_PROVIDER, SessionCache, SessionSettings
from tests.unit.pipelines import onnx_graphs
from tests.unit.pipelines.images import gradient, pixels
from tests.unit.pipelines.reference import (
    NO_SAFETY_CHECKER,
    assert_matches,
    demo_generation,
    from_our_noise,
    run_diffusers,
)

DEMO_MODEL = DEMO_MODELS[0].name
CPU = SessionSettings(providers=("CPUExecutionProvider",))


@pytest.fixture
def networks_path(models_path: Path, tmp_path: Path) -> Path:
    """A models folder with the demo model (linked, never written) and empty network folders."""
    path = tmp_path / "models"
    (path / "lora").mkdir(parents=True)
    (path / "inversion").mkdir()
    (path / DEMO_MODEL).symlink_to(models_path / DEMO_MODEL, target_is_directory=True)
    return path


@pytest.fixture(scope="module")
def parts(models_path: Path) -> dict[str, Any]:
    """The demo model's torch modules, for making networks of the right shapes (never changed)."""
    return demo_torch_parts(models_path, DEMO_MODEL)


def fresh_parts(models_path: Path) -> dict[str, Any]:
    """A private copy of the torch modules, for diffusers to load networks into."""
    return demo_torch_parts(models_path, DEMO_MODEL)


def random_loha(parts: dict[str, Any], seed: int = 1) -> dict[str, torch.Tensor]:
    """A LoHA for the same modules: ``(w1_a @ w1_b) * (w2_a @ w2_b)``, conv kernels flattened into ``b``."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, _, module in trained_modules(parts):
        shape = module.get_parameter("weight").shape
        out_features, fan_in = shape[0], int(np.prod(shape[1:]))
        for side in ("w1", "w2"):
            tensors[f"{key}.hada_{side}_a"] = torch.randn((out_features, RANK), generator=generator) * 0.3
            tensors[f"{key}.hada_{side}_b"] = torch.randn((RANK, fan_in), generator=generator) * 0.3
        tensors[f"{key}.alpha"] = torch.tensor(ALPHA)
    return tensors


def folder_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` and the demo model it links to, to prove nothing was written."""
    files = [*path.rglob("*"), *(path / DEMO_MODEL).resolve().rglob("*")]
    return {str(file): hashlib.sha256(file.read_bytes()).hexdigest() for file in files if file.is_file()}


def demo(networks_path: Path, cache: SessionCache | None = None) -> DiffusionModel:
    return load_model(networks_path, DEMO_MODEL, cache or SessionCache(max_models=2, settings=CPU))


def test_every_lora_module_has_a_weight_in_the_graphs(networks_path: Path, parts: dict[str, Any]) -> None:
    import onnx

    tensors = {key: value.numpy() for key, value in random_lora(parts).items()}
    for component in ("unet", "text_encoder"):
        graph = onnx.load(
            str(networks_path / DEMO_MODEL / component / "model.onnx"), load_external_data=False
        )
        deltas = lora_deltas(tensors, LORA_PREFIXES[component])
        assert deltas
        assert set(deltas) <= set(graph_weights(graph.graph))


def with_lora(path: Path, weight: float) -> Callable[..., Any]:
    """A pipeline factory for ``run_diffusers``: diffusers' pipeline with the LoRA fused at ``weight``."""
    from diffusers import StableDiffusionPipeline

    def build(**components: Any) -> Any:
        pipe: Any = StableDiffusionPipeline(**components)
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="test")
        pipe.fuse_lora(lora_scale=weight)
        return pipe

    return build


def test_lora_txt2img_matches_diffusers(
    models_path: Path, networks_path: Path, parts: dict[str, Any]
) -> None:
    lora = networks_path / "lora" / "detail.safetensors"
    save_file(random_lora(parts), str(lora))
    model = demo(networks_path)
    gen = demo_generation()
    ours = pixels(txt2img(Run(model, demo_generation(prompt=f"{gen.prompt} <lora:detail:0.8>"))))
    reference = run_diffusers(
        with_lora(lora, 0.8), fresh_parts(models_path), model, gen, **from_our_noise(gen)
    )
    plain = pixels(txt2img(Run(model, gen)))
    assert np.abs(plain - reference).max() > 20  # the LoRA changes the image: this comparison can fail
    assert_matches(ours, reference, (1, 48, 64, 3))


def test_loha_deltas_match_a_torch_computation(networks_path: Path, parts: dict[str, Any]) -> None:
    from onnx import load, numpy_helper

    save_file(random_loha(parts), str(networks_path / "lora" / "hada.safetensors"))
    blend = prompt_blend(networks_path, [parse_prompt("<lora:hada:-0.6>")])
    tensors = network_tensors(blend.loras[0])
    for component, module_name in (
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"),
        ("unet", "down_blocks.1.resnets.0.conv1"),
        ("unet", "down_blocks.0.attentions.0.proj_in"),
        ("text_encoder", "encoder.layers.1.mlp.fc1"),
    ):
        module = (parts["unet"] if component == "unet" else parts["text_encoder"]).get_submodule(module_name)
        key = ("lora_unet_" if component == "unet" else "lora_te_text_model_") + module_name.replace(".", "_")
        w1 = torch.from_numpy(tensors[f"{key}.hada_w1_a"]) @ torch.from_numpy(tensors[f"{key}.hada_w1_b"])
        w2 = torch.from_numpy(tensors[f"{key}.hada_w2_a"]) @ torch.from_numpy(tensors[f"{key}.hada_w2_b"])
        expected = module.weight.detach() + -0.6 * ALPHA / RANK * (w1 * w2).reshape(module.weight.shape)

        path = networks_path / DEMO_MODEL / component / "model.onnx"
        variant = blend.variant(component)
        assert variant is not None
        blended = variant.initializers(path).same_shape
        target = graph_weights(load(str(path), load_external_data=False).graph)[module_name.replace(".", "_")]
        ours = blended[target.initializer]
        ours = ours.T if target.transposed else ours
        assert np.abs(ours.reshape(expected.shape) - expected.numpy()).max() < 1e-5
        base = numpy_helper.to_array(
            next(t for t in load(str(path)).graph.initializer if t.name == target.initializer)
        )
        assert np.abs(ours - (base.T if target.transposed else base)).max() > 1e-2


def test_lora_and_loha_run_together(networks_path: Path, parts: dict[str, Any]) -> None:
    save_file(random_lora(parts), str(networks_path / "lora" / "detail.safetensors"))
    save_file(random_loha(parts), str(networks_path / "lora" / "hada.safetensors"))
    model = demo(networks_path)
    both = pixels(txt2img(Run(model, demo_generation(prompt="a cat <lora:detail:0.5> <lora:hada:0.3>"))))
    one = pixels(txt2img(Run(model, demo_generation(prompt="a cat <lora:detail:0.5>"))))
    assert both.shape == one.shape == (1, 48, 64, 3)
    assert np.abs(both - one).max() > 0


def test_a_lora_run_on_a_cuda_worker_stays_on_the_sessions_that_blend_it(
    networks_path: Path, parts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused CUDA path builds its UNet from the folder, without the LoRA: it is not taken."""
    import pipelines.gpu.batch as gpu_batch
    import pipelines.gpu.runtime as runtime

    def fused(run: Run) -> list[Any]:
        raise AssertionError("the fused CUDA path was taken")

    monkeypatch.setattr(runtime, "gpu_settings", lambda sessions: runtime.GpuSettings())
    monkeypatch.setattr(runtime, "gpu_model", lambda folder, settings: object())
    monkeypatch.setattr(gpu_batch, "run_txt2img", fused)
    save_file(random_lora(parts), str(networks_path / "lora" / "detail.safetensors"))
    model = demo(networks_path)
    images = txt2img(Run(model, demo_generation(prompt="a cat <lora:detail:0.5>")))
    assert pixels(images).shape == (1, 48, 64, 3)
    # Without a LoRA the fused path is taken.
    with pytest.raises(AssertionError, match="fused CUDA path"):
        txt2img(Run(model, demo_generation(prompt="a cat")))


def test_a_lora_job_in_a_batch_gets_its_lora_and_its_batch_mates_do_not(
    networks_path: Path, parts: dict[str, Any]
) -> None:
    """Batch mates share UNet calls only where they share the UNet: a job whose prompt blends a
    LoRA into it runs on the blended sessions, as alone, and the plain jobs without it."""
    from pipelines.gpu.batch import Txt2ImgJob, txt2img_batch

    save_file(random_lora(parts), str(networks_path / "lora" / "detail.safetensors"))
    model = demo(networks_path)
    gens = [
        demo_generation(prompt="a cat <lora:detail:0.8>", seed=3),
        demo_generation(prompt="a cat", seed=3),
        demo_generation(prompt="a dog", seed=4),
    ]
    outcomes = txt2img_batch(model, [Txt2ImgJob(gen) for gen in gens])
    for gen, outcome in zip(gens, outcomes, strict=True):
        assert outcome.error is None
        assert np.abs(pixels(outcome.images) - pixels(txt2img(Run(model, gen)))).max() <= 1
    assert np.abs(pixels(outcomes[0].images) - pixels(outcomes[1].images)).max() > 10


def test_a_lora_img2img_on_a_cuda_worker_stays_on_the_sessions(
    networks_path: Path, parts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``Run.denoise`` loop asks ``graph_model`` first: a LoRA keeps it on the sessions."""
    import pipelines.gpu.runtime as runtime
    from pipelines.diffusion.img2img import img2img

    def gpu_model(folder: Path, settings: Any) -> Any:
        raise AssertionError("the CUDA-graph path was taken")

    monkeypatch.setattr(runtime, "gpu_settings", lambda sessions: runtime.GpuSettings())
    monkeypatch.setattr(runtime, "gpu_model", gpu_model)
    save_file(random_lora(parts), str(networks_path / "lora" / "detail.safetensors"))
    model = demo(networks_path)
    images = img2img(Run(model, demo_generation(prompt="a cat <lora:detail:0.5>")), gradient(), 0.5)
    assert pixels(images).shape == (1, 48, 64, 3)
    with pytest.raises(AssertionError, match="CUDA-graph path"):
        img2img(Run(model, demo_generation(prompt="a cat")), gradient(), 0.5)


@pytest.fixture(scope="module")
def fused_unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo UNet as a CUDA folder holds it: exported for the GPU recipe, fused, fp16."""
    folder = tmp_path_factory.mktemp("fused")
    exported = onnx_graphs.export_for_gpu(demo_unet(), folder / "plain" / ONNX_FILE)
    optimize_component(exported, folder / "unet" / ONNX_FILE, "unet")
    return folder / "unet" / ONNX_FILE


def blend_variant(models: Path, lora: dict[str, torch.Tensor], component: str) -> Any:
    """The ``ComponentBlend`` of ``lora`` at weight 0.7 for ``component``, saved in ``models/lora``."""
    (models / "lora").mkdir(parents=True, exist_ok=True)
    save_file(lora, str(models / "lora" / "detail.safetensors"))
    variant = prompt_blend(models, [parse_prompt("<lora:detail:0.7>")]).variant(component)
    assert variant is not None
    return variant


def same_weights(ours: np.ndarray, expected: np.ndarray) -> bool:
    """Equal but for fp16 rounding: within 2 fp16 ulps of the tensor's largest value.

    Blending into fp16 weights rounds twice (the weight once fused, the sum), blending before
    the fp16 conversion once.
    """
    if ours.shape != expected.shape or not np.issubdtype(expected.dtype, np.floating):
        return ours.shape == expected.shape and np.array_equal(ours, expected)
    a, b = ours.astype(np.float32), expected.astype(np.float32)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    return bool(np.abs(a - b).max(initial=0.0) <= 2 * np.float32(np.spacing(np.float16(scale))))


def test_every_lora_module_has_a_place_in_the_fused_cuda_unet(
    fused_unet: Path, parts: dict[str, Any]
) -> None:
    """The fusions pack each attention's q/k/v (self) or k/v (cross) weights: each module finds its part."""
    import onnx

    graph = onnx.load(str(fused_unet), load_external_data=False).graph
    weights = graph_weights(graph)
    deltas = lora_deltas(
        {key: value.numpy() for key, value in random_lora(parts).items()}, LORA_PREFIXES["unet"]
    )
    assert set(deltas) <= set(weights) and unplaced_weights(graph, weights) == []
    attentions = sorted({module.rsplit("_to_", 1)[0] for module in deltas if "_attn" in module})
    assert len(attentions) == 8
    for attention in attentions:
        packed = {weights[f"{attention}_to_{projection}"].initializer for projection in "qkv"}
        assert len(packed) == (1 if attention.endswith("attn1") else 2), attention
    assert weights["down_blocks_0_resnets_0_conv1"].channels_last


@pytest.mark.parametrize(
    ("model", "component"), [(DEMO_MODEL, "unet"), (DEMO_MODEL, "text_encoder"), (DEMO_SDXL, "unet")]
)
def test_blending_into_a_fused_graph_equals_fusing_the_blended_graph(
    models_path: Path, tmp_path: Path, model: str, component: str
) -> None:
    """Fuse then blend (a LoRA on a CUDA folder) against blend then fuse, every initializer.

    Blending into the plain export is checked against diffusers above; the fusions then put each
    blended weight where they put it, so the two agree wherever a fused place is right.
    """
    parts = demo_torch_parts(models_path, model)
    variant = blend_variant(tmp_path, random_lora(parts), component)
    plain = tmp_path / "plain" / component / ONNX_FILE
    if component == "unet":
        onnx_graphs.export_for_gpu(parts["unet"], plain)
    else:
        onnx_graphs.export_text_encoder_for_gpu(parts[component], plain)
    blended = onnx_graphs.with_initializers(
        plain, tmp_path / "blended" / component / ONNX_FILE, variant.initializers(plain).same_shape
    )
    fused, expected = (tmp_path / name / component / ONNX_FILE for name in ("fused", "blended-fused"))
    optimize_component(plain, fused, COMPONENT_TYPES[component])
    optimize_component(blended, expected, COMPONENT_TYPES[component])

    ours = variant.initializers(fused).same_shape
    before, after = onnx_graphs.initializer_arrays(fused), onnx_graphs.initializer_arrays(expected)
    assert before.keys() == after.keys()
    changed = {name for name in after if not same_weights(before[name], after[name])}
    assert set(ours) == changed  # every weight the LoRA changes, and only those
    for name, value in ours.items():
        assert value.dtype == after[name].dtype == np.float16
        assert same_weights(value, after[name]), name


def test_a_lora_on_a_fused_folder_runs_like_on_the_plain_folder(
    models_path: Path, networks_path: Path, parts: dict[str, Any]
) -> None:
    """A folder marked fused blends LoRAs; its UNet (fused with CPU kernels only, fp32: ``Attention``
    with packed q|k|v weights) gives the plain folder's numbers with the LoRA, on the CPU."""
    fused = networks_path / "fused"
    shutil.copytree(models_path / DEMO_MODEL, fused)
    exported = onnx_graphs.export_for_gpu(demo_unet(), networks_path.parent / "export" / ONNX_FILE)
    optimize_component(exported, fused / "unet" / ONNX_FILE, "unet", fp16=False, cuda=False)
    assert onnx_graphs.op_counts(fused / "unet" / ONNX_FILE)["Attention"] == 4
    (fused / GPU_MARKER).write_text('{"precision": "fp32", "fused": {}}')
    save_file(random_lora(parts), str(networks_path / "lora" / "detail.safetensors"))
    prompt = parse_prompt("a cat <lora:detail:0.8>")
    cache = SessionCache(max_models=4, settings=CPU)
    rng = np.random.default_rng(4)
    feeds = {
        "sample": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([500.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((1, 77, 32)).astype(np.float32),
    }

    def unet(name: str, blended: bool) -> np.ndarray:
        model = load_model(networks_path, name, cache)
        model = model.with_networks(prompt, None) if blended else model
        return np.asarray(model.session("unet").run(None, feeds)[0])

    ours, reference = unet("fused", blended=True), unet(DEMO_MODEL, blended=True)
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) < 1e-4
    without_lora = unet("fused", blended=False)
    assert np.linalg.norm(without_lora - reference) / np.linalg.norm(reference) > 1e-2


def test_a_lora_module_without_a_place_fails_only_where_a_fused_weight_has_no_module(
    fused_unet: Path, tmp_path: Path, parts: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A module the architecture lacks is skipped with a warning, as on any graph; one that may sit
    in a weight of a fusion ``graph_weights`` does not know fails the job, naming it."""
    import onnx

    lora = {**random_lora(parts), "lora_unet_no_such_block.lora_down.weight": torch.ones((RANK, 4))}
    lora["lora_unet_no_such_block.lora_up.weight"] = torch.ones((4, RANK))
    variant = blend_variant(tmp_path, lora, "unet")
    with caplog.at_level("WARNING"):
        assert variant.initializers(fused_unet).same_shape
    assert "1 of 65 unet modules have no weight" in caplog.text

    # An attention whose output projection lost its name: nothing tells whose q, k, v it packs.
    model = onnx.load(str(fused_unet))
    to_out = "/model/mid_block/attentions.0/transformer_blocks.0/attn1/to_out.0/MatMul"
    next(node for node in model.graph.node if node.name == to_out).name = "MatMul_out"
    unknown = tmp_path / "unknown" / "unet" / ONNX_FILE
    unknown.parent.mkdir(parents=True)
    onnx.save_model(model, str(unknown))
    with pytest.raises(FusedGraphError, match="mid_block_attentions_0_transformer_blocks_0_attn1_to_q"):
        variant.initializers(unknown)


def ours_embeddings(model: DiffusionModel, prompt: str) -> np.ndarray:
    """Our text encoder's hidden states for ``prompt``, as the pipeline runs it."""
    run = Run(model, demo_generation(prompt=prompt))
    text = parse_prompt(prompt).text
    return encode_text(run.model, token_windows(run.model.tokenizer, text))


def diffusers_embeddings(models_path: Path, path: Path, token: str, prompt: str) -> np.ndarray:
    """diffusers' ``load_textual_inversion`` of ``path`` as ``token``, then its prompt encoding."""
    from diffusers import StableDiffusionPipeline

    parts = fresh_parts(models_path)
    pipe: Any = StableDiffusionPipeline(**parts, **NO_SAFETY_CHECKER, scheduler=None)
    pipe.load_textual_inversion(str(path), token=token)
    embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    result: np.ndarray = embeds.detach().numpy()
    return result


def test_multi_vector_inversion_matches_diffusers(models_path: Path, networks_path: Path) -> None:
    vectors = torch.randn((3, 32), generator=torch.Generator().manual_seed(5))
    path = networks_path / "inversion" / "zorble.safetensors"
    save_file({"emb_params": vectors}, str(path))
    model = demo(networks_path)
    ours = ours_embeddings(model, "a zorble-0 zorble-1 zorble-2 cat <inversion:zorble:1>")
    reference = diffusers_embeddings(models_path, path, "zorble", "a zorble cat")
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-4
    plain = ours_embeddings(model, "a cat")
    assert np.abs(ours[:, :4] - plain[:, :4]).max() > 1e-2


def test_concept_inversion_matches_diffusers(models_path: Path, networks_path: Path) -> None:
    vector = torch.randn((32,), generator=torch.Generator().manual_seed(6))
    path = networks_path / "inversion" / "plinth.bin"
    torch.save({"<plinth>": vector}, str(path))
    model = demo(networks_path)
    reference = diffusers_embeddings(models_path, path, "<plinth>", "a <plinth> on a hill")
    for prompt in ("a <plinth> on a hill <inversion:plinth:1>", "a plinth on a hill <inversion:plinth:1>"):
        assert np.abs(ours_embeddings(model, prompt) - reference).max() < 1e-4


def test_inversion_tokens_are_the_weighted_vectors_and_their_sum(networks_path: Path) -> None:
    vectors = torch.randn((2, 32), generator=torch.Generator().manual_seed(7)).numpy()
    save_file(
        {"emb_params": torch.from_numpy(vectors)}, str(networks_path / "inversion" / "quux.safetensors")
    )
    blend = prompt_blend(networks_path, [parse_prompt("<inversion:quux:0.5>")])
    variant = blend.variant("text_encoder")
    assert variant is not None and blend.variant("unet") is None
    [embedding] = variant.initializers(
        networks_path / DEMO_MODEL / "text_encoder" / "model.onnx"
    ).reshaped.values()
    tokenizer = inversion_tokenizer(networks_path / DEMO_MODEL / "tokenizer", blend.inversions)
    assert (
        embedding.shape
        == (len(tokenizer), 32)
        == (len(load_tokenizer(networks_path / DEMO_MODEL / "tokenizer")) + 4, 32)
    )
    rows = {
        token: embedding[tokenizer.convert_tokens_to_ids(token)]
        for token in ("quux-0", "quux-1", "quux", "quux-all")
    }
    assert np.allclose(rows["quux-0"], 0.5 * vectors[0]) and np.allclose(rows["quux-1"], 0.5 * vectors[1])
    assert np.allclose(rows["quux"], 0.5 * vectors.sum(0)) and np.allclose(rows["quux-all"], rows["quux"])


def test_a1111_pt_embedding_reads_like_emb_params(networks_path: Path) -> None:
    vectors = torch.randn((2, 32), generator=torch.Generator().manual_seed(8))
    torch.save(
        {"string_to_token": {"*": torch.tensor(265)}, "string_to_param": {"*": vectors}, "name": "old"},
        str(networks_path / "inversion" / "old.pt"),
    )
    [inversion] = prompt_blend(networks_path, [parse_prompt("<embeddings:old:2>")]).inversions
    made = inversion_vectors(network_tensors(inversion), inversion.name, inversion.weight)
    assert list(made) == ["old-0", "old-1", "old", "old-all"]
    assert np.allclose(made["old-1"], 2 * vectors[1].numpy()) and np.allclose(
        made["old"], 2 * vectors.sum(0).numpy()
    )


@pytest.mark.parametrize("key", ["emb_params", "string_to_param.*"])
def test_a_one_vector_embedding_still_makes_its_layer_and_sum_tokens(key: str) -> None:
    """onnx-web makes ``name-0`` … and ``name-all`` for these formats whatever their vector count,
    so a prompt written for it that says ``solo-0`` or ``solo-all`` finds the vector here too."""
    vector = np.arange(32, dtype=np.float32).reshape(1, 32)
    made = inversion_vectors({key: vector}, "solo", 2.0)
    assert list(made) == ["solo-0", "solo", "solo-all"]
    assert all(np.array_equal(made[token], 2 * vector[0]) for token in made)


def test_a_one_vector_concept_makes_only_its_name_and_its_own_token() -> None:
    vector = np.arange(32, dtype=np.float32)
    made = inversion_vectors({"<solo>": vector}, "solo", 1.0)
    assert list(made) == ["solo", "<solo>"]
    assert np.array_equal(made["<solo>"], vector)


def test_sessions_are_reused_for_the_same_networks_and_rebuilt_for_new_weights(
    networks_path: Path, parts: dict[str, Any]
) -> None:
    save_file(random_lora(parts), str(networks_path / "lora" / "detail.safetensors"))
    save_file({"emb_params": torch.randn((2, 32))}, str(networks_path / "inversion" / "zorble.safetensors"))
    before = folder_hashes(networks_path)
    loaded: list[Path] = []
    cache = SessionCache(max_models=2, settings=CPU, on_load=lambda root, seconds: loaded.append(root))
    model = demo(networks_path, cache)

    def generate(prompt: str) -> dict[str, Any]:
        run = Run(model, demo_generation(prompt=prompt, steps=1))
        txt2img(run)
        return {name: run.model.session(name) for name in ("text_encoder", "unet", "vae_decoder")}

    first = generate("a zorble cat <lora:detail:0.5> <inversion:zorble:1>")
    assert len(loaded) == 3
    sessions = generate("a zorble cat <lora:detail:0.5> <inversion:zorble:1>")
    assert len(loaded) == 3
    assert all(sessions[name] is first[name] for name in first)
    changed = generate("a zorble cat <lora:detail:0.7> <inversion:zorble:1>")
    assert len(loaded) == 5  # the text encoder and UNet again; the VAE is untouched
    assert changed["vae_decoder"] is first["vae_decoder"]
    assert changed["unet"] is not first["unet"] and changed["text_encoder"] is not first["text_encoder"]
    inversion_only = generate("a zorble cat <inversion:zorble:1>")
    assert len(loaded) == 7  # no LoRA: the file's own UNet, and the text encoder with the inversion only
    assert inversion_only["unet"] is not changed["unet"]
    assert folder_hashes(networks_path) == before


def test_missing_networks_are_skipped_and_listed(networks_path: Path, parts: dict[str, Any]) -> None:
    save_file(random_lora(parts), str(networks_path / "lora" / "detail.safetensors"))
    save_file({"emb_params": torch.randn((2, 32))}, str(networks_path / "inversion" / "zorble.safetensors"))
    prompt = parse_prompt("a cat <lora:detail:1> <lora:nope:1> <inversion:zorble:1> <embeddings:gone:0.5>")
    registry = ModelRegistry(networks_path)
    assert unknown_networks(prompt, registry) == ["lora:nope", "inversion:gone"]
    assert unknown_networks(parse_prompt("a cat <lora:detail:0.2>"), registry) == []
    blend = prompt_blend(networks_path, [prompt])
    assert [network.name for network in blend.loras] == ["detail"]
    assert [network.name for network in blend.inversions] == ["zorble"]
    model = demo(networks_path)
    assert (
        Run(model, Generation(**{**demo_generation().__dict__, "prompt": "a cat <lora:nope:1>"})).model
        is model
    )


def test_sdxl_lora_weights_match_diffusers_and_an_sdxl_run_uses_them(
    models_path: Path, tmp_path: Path
) -> None:
    import onnx
    from diffusers import StableDiffusionXLPipeline

    from pipelines.diffusion.sdxl import txt2img_sdxl

    path = tmp_path / "models"
    (path / "lora").mkdir(parents=True)
    (path / DEMO_SDXL).symlink_to(models_path / DEMO_SDXL, target_is_directory=True)
    parts = demo_torch_parts(models_path, DEMO_SDXL)
    modules = list(trained_modules(parts))
    save_file(random_lora(parts), str(path / "lora" / "xl.safetensors"))
    pipe: Any = StableDiffusionXLPipeline(**parts, scheduler=None)
    pipe.load_lora_weights(str(path / "lora"), weight_name="xl.safetensors")
    pipe.fuse_lora(lora_scale=0.7)

    blend = prompt_blend(path, [parse_prompt("<lora:xl:0.7>")])
    for component in ("unet", "text_encoder", "text_encoder_2"):
        graph_path = path / DEMO_SDXL / component / "model.onnx"
        variant = blend.variant(component)
        assert variant is not None
        blended = variant.initializers(graph_path).same_shape
        weights = graph_weights(onnx.load(str(graph_path), load_external_data=False).graph)
        trained = [(key, module) for key, owner, module in modules if owner == component]
        assert trained
        for key, module in trained:
            target = weights[key.split("_", 2)[2].removeprefix("text_model_")]
            ours = blended[target.initializer]
            ours = ours.T if target.transposed else ours
            fused = module.get_parameter("weight").detach().numpy()  # diffusers fused into these
            assert np.abs(ours.reshape(fused.shape) - fused).max() < 1e-5, key

    # An SDXL embedding has a vector per encoder: each tokenizer and encoder gets its own.
    (path / "inversion").mkdir()
    vectors = {"clip_l": torch.randn((1, 32)), "clip_g": torch.randn((1, 32))}
    save_file(vectors, str(path / "inversion" / "xlconcept.safetensors"))
    inversions = prompt_blend(path, [parse_prompt("<inversion:xlconcept:1>")])
    for component, key in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
        variant = inversions.variant(component)
        assert variant is not None
        [embedding] = variant.initializers(path / DEMO_SDXL / component / "model.onnx").reshaped.values()
        tokenizer = inversion_tokenizer(path / DEMO_SDXL / TOKENIZERS[component], inversions.inversions)
        assert np.allclose(embedding[tokenizer.convert_tokens_to_ids("xlconcept")], vectors[key][0].numpy())

    model = load_model(path, DEMO_SDXL, SessionCache(max_models=2, settings=CPU))
    gen = demo_generation(model=DEMO_SDXL, prompt="a xlconcept cat", steps=2)
    plain = pixels(txt2img_sdxl(Run(model, gen)))
    for networks in ("<lora:xl:0.7>", "<inversion:xlconcept:1>"):
        changed = demo_generation(model=DEMO_SDXL, prompt=f"a xlconcept cat {networks}", steps=2)
        assert np.abs(plain - pixels(txt2img_sdxl(Run(model, changed)))).max() > 0


def test_the_demo_networks_are_built_with_the_demo_models_and_change_the_image(
    models_path: Path, demo_model: DiffusionModel
) -> None:
    registry = ModelRegistry(models_path)
    assert {(network.name, network.type) for network in registry.networks()} >= {
        (DEMO_LORA, "lora"),
        (DEMO_INVERSION, "inversion"),
    }
    plain = pixels(txt2img(Run(demo_model, demo_generation(prompt="a cat"))))
    lora = pixels(txt2img(Run(demo_model, demo_generation(prompt=f"a cat <lora:{DEMO_LORA}:0.8>"))))
    styled = pixels(
        txt2img(
            Run(demo_model, demo_generation(prompt=f"a cat {DEMO_INVERSION} <inversion:{DEMO_INVERSION}:1>"))
        )
    )
    assert np.abs(lora - plain).max() > 0 and np.abs(styled - plain).max() > 0


def test_a_network_file_is_hashed_once_per_version(tmp_path: Path) -> None:
    path = tmp_path / "detail.safetensors"
    path.write_bytes(b"first")
    first = file_hash(path)
    assert first == hashlib.sha256(b"first").hexdigest().upper()
    with patch("hashlib.sha256", side_effect=AssertionError("hashed again")):
        assert file_hash(path) == first
    path.write_bytes(b"second version")
    assert file_hash(path) == hashlib.sha256(b"second version").hexdigest().upper()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU and onnxruntime-gpu")
@pytest.mark.parametrize("fused", [False, True], ids=["fp32-folder", "fused-fp16-folder"])
def test_a_lora_changes_a_cuda_session_as_it_changes_the_cpu_one(
    models_path: Path, networks_path: Path, parts: dict[str, Any], fused: bool
) -> None:
    """The CUDA provider keeps a LoRA's blended weights: given them in host memory it used the
    file's own with only a warning, so every LoRA job on a GPU made the image without its LoRA.

    The fused folder is the fp16 fusion with CPU kernels only (``Attention`` with packed q|k|v): the
    demo's GroupNorms are too narrow for the CUDA-only kernel, the packing is the same.
    """
    name = DEMO_MODEL
    if fused:
        name = "fused-fp16"
        shutil.copytree(models_path / DEMO_MODEL, networks_path / name)
        exported = onnx_graphs.export_for_gpu(demo_unet(), networks_path.parent / "export" / ONNX_FILE)
        optimize_component(exported, networks_path / name / "unet" / ONNX_FILE, "unet", fp16=True, cuda=False)
        (networks_path / name / GPU_MARKER).write_text('{"precision": "fp16", "fused": {}}')
    save_file(random_lora(parts), str(networks_path / "lora" / "detail.safetensors"))
    prompt = parse_prompt("a cat <lora:detail:1.0>")
    rng = np.random.default_rng(4)
    feeds = {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([500.0, 500.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32),
    }

    def unet(folder: str, settings: SessionSettings, blended: bool) -> np.ndarray:
        model = load_model(networks_path, folder, SessionCache(max_models=2, settings=settings))
        model = model.with_networks(prompt, None) if blended else model
        return np.asarray(model.session("unet").run(None, feeds)[0], dtype=np.float32)

    cuda = SessionSettings(providers=(CUDA_PROVIDER, CPU_PROVIDER))
    reference = unet(DEMO_MODEL, CPU, blended=True)
    ours, without_lora = unet(name, cuda, blended=True), unet(name, cuda, blended=False)

    def distance(output: np.ndarray) -> float:
        return float(np.linalg.norm(output - reference) / np.linalg.norm(reference))

    assert distance(without_lora) > 0.1  # what the LoRA changes
    # The CUDA provider's fp32 matmuls and convolutions run in TF32 (1.4e-3 measured on an H100).
    assert distance(ours) < 1e-2


def test_metadata_hashes_the_file_the_blend_loads(tmp_path: Path) -> None:
    from pipelines.diffusion.model import file_hash, network_entries
    from pipelines.diffusion.prompt import parse_prompt

    folder = tmp_path / "lora"
    folder.mkdir()
    # Sidecars that sort before the weights (as Civitai downloads leave them), and glob characters.
    for name in ("detail.civitai.info", "detail.preview.png", "detail.safetensors", "style[v2].pt"):
        (folder / name).write_bytes(name.encode())
    loras = parse_prompt("a cat <lora:detail:0.5> <lora:style[v2]:1> <lora:absent:1>").loras
    entries = network_entries(tmp_path, "lora", loras)
    assert entries == [
        {"name": "detail", "weight": 0.5, "hash": file_hash(folder / "detail.safetensors")},
        {"name": "style[v2]", "weight": 1.0, "hash": file_hash(folder / "style[v2].pt")},
        {"name": "absent", "weight": 1.0, "hash": "unknown"},
    ]
