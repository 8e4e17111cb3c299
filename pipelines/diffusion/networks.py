"""LoRAs and textual inversions named by prompt tokens, blended into the ONNX models in memory.

What onnx-web does at load time (features §2, §4.5), without writing to the models folder:

- A LoRA (``models/lora/NAME.*``, kohya sd-scripts format) adds ``weight * alpha / rank * up @ down``
  (or a LoHA's Hadamard product) to the weights of the UNet (``lora_unet_*``) and the text encoders
  (``lora_te_*``; SDXL's ``lora_te1_*`` and ``lora_te2_*``). Linear layers, 1x1 and 3x3 convolutions.
- A textual inversion (``models/inversion/NAME.*``) adds tokens to the tokenizer and rows to the
  text encoder's token embedding: ``NAME``, ``NAME-0 … NAME-N`` (one per vector, even for one)
  and ``NAME-all``; ``NAME`` and ``NAME-all`` are the sum of the vectors, as in onnx-web. A
  single-concept file (``{"<token>": vector}``) makes ``NAME`` and its own ``<token>`` only.

Kohya names modules by their diffusers path with ``_`` for ``.``; our ONNX exports name each
``MatMul``/``Gemm``/``Conv`` node by the module it came from (``/model/down_blocks.0/…/to_q/MatMul``)
and keep Linear weights either under their own name or, transposed, as ``onnx::MatMul_NNN``. The
map from one to the other is read from each graph, so it holds for any export of these modules.

The graphs of a folder fused for CUDA (``convert --optimize gpu``, ``pipelines.gpu.optimize``)
hold the same weights in other places, which the map follows (``graph_weights``):

- an ``NhwcConv`` keeps its kernel channels-last, ``(out, kh, kw, in)``, and the name of the ``Conv``
  it replaced after its own (``NhwcConv_3-/model/…/conv1/Conv``);
- a fused attention packs its module's q, k and v weights into one ``(in, …)`` tensor: an
  ``Attention`` node's weight is ``q | k | v`` side by side (fused without fp16: an fp32 folder,
  or the fusions with CPU kernels); a ``MultiHeadAttention`` node reads a packed ``MatMul`` whose
  columns interleave per head, ``(in, heads, 3, head_size)`` for self-attention and
  ``(in, heads, 2, head_size)`` for the k and v of cross-attention (fp16). Their q/k/v nodes are
  gone; the module is named by the output projection the attention node feeds
  (``…/attn1/to_out.0/MatMul``), whose name survives;
- the bias, norm and activation fusions (``BiasSplitGelu``, ``BiasAdd``, ``SkipLayerNormalization``,
  ``GroupNorm``) move biases and norms, which LoRAs leave alone; fp16 changes only dtypes.

A graph with a layer weight that no module name reaches (a fusion this map does not know) fails
a LoRA whose modules it cannot place, rather than blend part of it.

The deltas reach ONNX Runtime as replacement initializers (``SessionOptions.add_initializer``):
the model file is read as usual and only the changed weights live twice in memory. A token
embedding that grows is written into an in-memory copy of the (small) text encoder graph.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.diffusion.prompt import Network, ParsedPrompt
from pipelines.models.registry import ModelRegistry, unet_config
from pipelines.models.sessions import Initializers

logger = logging.getLogger(__name__)

LORA_FOLDER = "lora"
INVERSION_FOLDER = "inversion"
#: Network file formats, in the order a name with several files picks them.
NETWORK_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin", ".pth")
#: Kohya key prefixes of each model component.
LORA_PREFIXES: Mapping[str, tuple[str, ...]] = {
    "unet": ("lora_unet_",),
    # The UNet that takes ControlNet residuals has the same weights (``pipelines.models.controlnets``).
    "cnet": ("lora_unet_",),
    "text_encoder": ("lora_te_", "lora_te1_"),
    "text_encoder_2": ("lora_te2_",),
}
#: The tokenizer that goes with each text encoder.
TOKENIZERS: Mapping[str, str] = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
#: Keys of an SDXL embedding file, per text encoder.
SDXL_EMBEDDING_KEYS: Mapping[str, str] = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}
#: Leading scopes that exports and kohya add around the same module path.
_WRAPPER_SCOPES = ("model_", "text_model_")
#: Graph ops whose second input is a layer's weight (``NhwcConv``: ONNX Runtime's fused conv).
_WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "NhwcConv")
#: ONNX Runtime's fused attentions: ``Attention`` takes its packed weight as its second input.
_ATTENTION_OPS = ("Attention", "MultiHeadAttention")
#: An attention module's q, k and v projections by the name of its output projection: the
#: fusions remove the first three nodes and keep the last (diffusers' ``Attention``, CLIP's).
_PROJECTIONS: Mapping[str, tuple[str, str, str]] = {
    "to_out.0": ("to_q", "to_k", "to_v"),
    "out_proj": ("q_proj", "k_proj", "v_proj"),
}


class FusedGraphError(ValueError):
    """A LoRA whose modules may lie in weights a fused graph holds in a layout this module does not know.

    ``graph_weights`` follows the fusions of ``pipelines.gpu.optimize`` (the module docstring
    lists them); a graph fused otherwise (another ONNX Runtime's fusions) may keep layer weights
    that no module name reaches. A LoRA with modules the graph has no place for may belong in
    them, and blending the rest would make an image that only looks like the LoRA's: the job
    fails with this message, which names the modules, instead.
    """


@dataclass(frozen=True)
class NetworkFile:
    """One network a prompt asked for: its file, its weight, and the file's stamp for cache keys."""

    name: str
    weight: float
    path: Path
    #: ``(mtime_ns, size)``: a file replaced under the same name makes a new session.
    stamp: tuple[int, int]


@dataclass(frozen=True)
class Blend:
    """The LoRAs and inversions blended into one generation's models; hashable, as cache keys are."""

    loras: tuple[NetworkFile, ...] = ()
    inversions: tuple[NetworkFile, ...] = ()

    def variant(self, component: str) -> ComponentBlend | None:
        """What changes in ``component`` (``unet``, ``text_encoder``...), or ``None`` if nothing."""
        if component not in LORA_PREFIXES:
            return None
        inversions = self.inversions if component in TOKENIZERS else ()
        if not self.loras and not inversions:
            return None
        return ComponentBlend(component, self.loras, inversions)


@dataclass(frozen=True)
class ComponentBlend:
    """A ``pipelines.models.sessions.SessionVariant``: one component's networks, built on demand."""

    component: str
    loras: tuple[NetworkFile, ...]
    inversions: tuple[NetworkFile, ...]

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.component, self.loras, self.inversions)

    def initializers(self, path: Path) -> Initializers:
        """The blended weights of the component whose graph is ``path``."""
        return blend_initializers(path, self)


#: No networks: the model as it is in the models folder.
NO_NETWORKS = Blend()


def network_file(models_path: Path, folder: str, name: str) -> Path | None:
    """The file of network ``name`` in ``models_path/folder``, or ``None`` if there is none."""
    base = models_path / folder
    if not base.is_dir() or "/" in name or "\\" in name or name in (".", ".."):
        return None
    files = {path.suffix.lower(): path for path in base.iterdir() if path.stem == name and path.is_file()}
    return next((files[suffix] for suffix in NETWORK_SUFFIXES if suffix in files), None)


def network_files(models_path: Path, folder: str, networks: Iterable[Network]) -> tuple[NetworkFile, ...]:
    """The files of ``networks``, the same name's weights summed (a name given twice counts twice).

    A network missing from the models folder is skipped with a warning, as onnx-web does.
    """
    weights: dict[str, float] = {}
    for network in networks:
        weights[network.name] = weights.get(network.name, 0.0) + network.weight
    found = []
    for name, weight in weights.items():
        path = network_file(models_path, folder, name)
        if path is None:
            logger.warning("no %s network named %r in the models folder; skipped", folder, name)
            continue
        stat = path.stat()
        found.append(NetworkFile(name, weight, path.resolve(), (stat.st_mtime_ns, stat.st_size)))
    return tuple(found)


def prompt_blend(models_path: Path, prompts: Sequence[ParsedPrompt | None]) -> Blend:
    """The networks named by ``prompts`` (the prompt and negative prompt) as a ``Blend``."""
    present = [prompt for prompt in prompts if prompt is not None]
    return Blend(
        loras=network_files(models_path, LORA_FOLDER, (n for p in present for n in p.loras)),
        inversions=network_files(models_path, INVERSION_FOLDER, (n for p in present for n in p.inversions)),
    )


def unknown_networks(prompt: ParsedPrompt, registry: ModelRegistry) -> list[str]:
    """Which ``<lora:…>``/``<inversion:…>`` tokens of ``prompt`` name no network in ``registry``.

    Answers ``["lora:NAME", "inversion:NAME", …]`` in prompt order, empty when every network is
    there; ``registry.networks("lora")`` lists the ones that are. ``<embeddings:…>`` counts as
    ``inversion``. The negative prompt is checked by a call of its own.
    """
    missing = [
        f"lora:{network.name}"
        for network in prompt.loras
        if registry.find_network("lora", network.name) is None
    ]
    missing += [
        f"inversion:{network.name}"
        for network in prompt.inversions
        if registry.find_network("inversion", network.name) is None
    ]
    return list(dict.fromkeys(missing))


def mismatched_networks(
    prompt: ParsedPrompt, registry: ModelRegistry, model: str
) -> list[tuple[str, str, int, int]]:
    """The ``(kind, name, width, model's width)`` of each LoRA or inversion of ``prompt`` that was
    made for another model family: its text-conditioning width is not the model's cross-attention
    width (an SD 1.5 LoRA on SD 2.1 or SDXL). Networks whose file does not say (not safetensors,
    other key names) and models whose folder does not say are left to the worker."""
    width = unet_config(registry.resolve(model), "cross_attention_dim")
    if width is None:
        return []
    # SDXL conditions on two encoders: its UNet's width is theirs summed, and its inversions carry
    # a vector per encoder (checked where they are blended).
    inversions = prompt.inversions if registry.family(model) == "sd" else []
    found = []
    for kind, folder, networks in (
        ("lora", LORA_FOLDER, prompt.loras),
        ("inversion", INVERSION_FOLDER, inversions),
    ):
        for network in networks:
            path = network_file(registry.models_path, folder, network.name)
            made_for = network_width(path, kind) if path is not None else None
            if made_for is not None and made_for != width:
                found.append((kind, network.name, made_for, width))
    return found


#: The most of a safetensors header read to learn a network's width (a LoRA's is some hundred KiB).
MAX_HEADER_BYTES = 16 * 1024 * 1024


def network_width(path: Path, kind: str) -> int | None:
    """The text-conditioning width a LoRA (its cross-attention ``to_k`` input) or an inversion (its
    vectors) was made for, from the safetensors header alone; ``None`` where it does not say."""
    shapes = safetensors_shapes(path) if path.suffix.lower() == ".safetensors" else None
    if not shapes:
        return None
    if kind == "lora":
        widths = {shape[1] for key, shape in shapes.items() if key.endswith("attn2_to_k.lora_down.weight")}
    else:
        widths = {
            shape[-1]
            for key, shape in shapes.items()
            if key == "emb_params" or key.startswith("string_to_param.")
        }
    return widths.pop() if len(widths) == 1 else None


def safetensors_shapes(path: Path) -> dict[str, list[int]] | None:
    """The 2-D tensor shapes a safetensors file's header lists (its JSON, read without the tensors)."""
    try:
        with path.open("rb") as file:
            size = int.from_bytes(file.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                return None
            header = json.loads(file.read(size))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    return {
        key: entry["shape"]
        for key, entry in header.items()
        if isinstance(entry, dict)
        and isinstance(entry.get("shape"), list)
        and len(entry["shape"]) == 2
        and all(isinstance(item, int) for item in entry["shape"])
    }


# --- reading network files -------------------------------------------------------------------


def load_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a network file as float32 numpy, nested dicts flattened to ``a.b`` keys."""
    import torch

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        loaded: Mapping[str, Any] = load_file(str(path), device="cpu")
    else:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    return _flatten(loaded)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    import torch

    flat: dict[str, np.ndarray] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            flat[f"{prefix}{key}"] = value.detach().to(torch.float32).numpy()
    return flat


@lru_cache(maxsize=4)
def _cached_tensors(path: Path, stamp: tuple[int, int]) -> dict[str, np.ndarray]:
    """``load_tensors`` kept for the few networks in use: one file serves the UNet and each encoder.

    Few, because a LoRA in float32 can be hundreds of megabytes and is only read while sessions load.
    """
    return load_tensors(path)


def network_tensors(network: NetworkFile) -> dict[str, np.ndarray]:
    return _cached_tensors(network.path, network.stamp)


# --- LoRA deltas ------------------------------------------------------------------------------


def lora_deltas(tensors: Mapping[str, np.ndarray], prefixes: Sequence[str]) -> dict[str, np.ndarray]:
    """Each module's weight delta at weight 1: ``alpha / rank * up @ down`` (or LoHA's product).

    Keys are kohya module names without the prefix, as ``module_key`` writes them
    (``down_blocks_0_attentions_0_proj_in``, ``encoder_layers_0_mlp_fc1``); values
    have the torch module's weight layout, ``(out, in)`` or ``(out, in, kh, kw)``.
    """
    deltas: dict[str, np.ndarray] = {}
    for key in tensors:
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            continue
        module, _, part = key.partition(".")
        if part == "lora_down.weight":
            deltas[module_key(module[len(prefix) :])] = _lora_delta(tensors, module)
        elif part == "hada_w1_a":
            deltas[module_key(module[len(prefix) :])] = _loha_delta(tensors, module)
    return deltas


def _alpha_scale(tensors: Mapping[str, np.ndarray], module: str, rank: int) -> float:
    """kohya's ``alpha / rank``; a file without alpha trained at scale 1."""
    alpha = tensors.get(f"{module}.alpha")
    return 1.0 if alpha is None else float(alpha) / rank


def _lora_delta(tensors: Mapping[str, np.ndarray], module: str) -> np.ndarray:
    down = tensors[f"{module}.lora_down.weight"]
    up = tensors[f"{module}.lora_up.weight"]
    mid = tensors.get(f"{module}.lora_mid.weight")
    rank = down.shape[0]
    up_2d = up.reshape(up.shape[0], rank)
    if mid is not None:
        # LoCon's CP decomposition: the kernel lives in ``mid``, ``down`` is 1x1.
        delta = np.einsum("or,rskl,si->oikl", up_2d, mid, down.reshape(rank, -1))
    else:
        delta = (up_2d @ down.reshape(rank, -1)).reshape(up.shape[0], *down.shape[1:])
    return delta * _alpha_scale(tensors, module, rank)


def _loha_delta(tensors: Mapping[str, np.ndarray], module: str) -> np.ndarray:
    w1a, w1b = tensors[f"{module}.hada_w1_a"], tensors[f"{module}.hada_w1_b"]
    w2a, w2b = tensors[f"{module}.hada_w2_a"], tensors[f"{module}.hada_w2_b"]
    t1, t2 = tensors.get(f"{module}.hada_t1"), tensors.get(f"{module}.hada_t2")
    rank = w1b.shape[0]
    if t1 is not None and t2 is not None:
        delta = np.einsum("ijkl,jr,ip->prkl", t1, w1b, w1a) * np.einsum("ijkl,jr,ip->prkl", t2, w2b, w2a)
    else:
        delta = (w1a @ w1b) * (w2a @ w2b)
    return delta * _alpha_scale(tensors, module, rank)


# --- the graph side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedPart:
    """One projection's columns in a packed q/k/v weight of shape ``(in, groups * block)``.

    Each of the ``groups`` blocks holds this projection in its columns ``start:start + width``:
    ``MultiHeadAttention``'s packing has a block per head, ``Attention``'s one block.
    """

    groups: int
    start: int
    width: int


@dataclass(frozen=True)
class GraphWeight:
    """Where a module's weight sits in an ONNX graph: an initializer, or its part of a packed one."""

    initializer: str
    #: ``MatMul`` keeps a Linear weight as ``(in, out)``, the transpose of torch's.
    transposed: bool
    #: ``NhwcConv`` keeps a kernel as ``(out, kh, kw, in)``.
    channels_last: bool = False
    part: PackedPart | None = None

    def add(self, base: np.ndarray, delta: np.ndarray) -> None:
        """Add ``delta`` (torch's layout of the module's weight) to ``base``, this initializer, in place."""
        if self.channels_last:
            out, kh, kw, fan_in = base.shape
            change: np.ndarray = delta.reshape(out, fan_in, kh, kw).transpose(0, 2, 3, 1)
        elif self.transposed:
            change = delta.reshape(delta.shape[0], -1).T
        else:
            change = delta
        if self.part is None:
            base += change.reshape(base.shape)
            return
        # A reshape of the contiguous ``base`` is a view of it: adding to the view adds to ``base``.
        blocks = base.reshape(base.shape[0], self.part.groups, -1)
        columns = slice(self.part.start, self.part.start + self.part.width)
        blocks[:, :, columns] += change.reshape(base.shape[0], self.part.groups, self.part.width)


def module_key(path: str) -> str:
    """A module path (``down_blocks.0/attentions.0/proj_in`` or ``text_model.encoder…``) in kohya's form."""
    key = path.strip("/").replace("/", "_").replace(".", "_")
    stripped = True
    while stripped:
        stripped = False
        for scope in _WRAPPER_SCOPES:
            if key.startswith(scope):
                key, stripped = key[len(scope) :], True
    return key


def graph_weights(graph: Any) -> dict[str, GraphWeight]:
    """Kohya module names -> where their weights are, read from an ONNX graph's nodes.

    Plain exports and the graphs fused for CUDA alike (the module docstring says where fusions
    put each weight); what a fused graph holds is found from the names and links of its nodes,
    so it holds for any size of the same architecture.
    """
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    found: dict[str, GraphWeight] = {}
    for module, weight in (*_layer_weights(graph, initializers), *_attention_weights(graph, initializers)):
        found.setdefault(module, weight)
    # Graphs whose nodes lost their names still name their own initializers ``<module>.weight``.
    for name in initializers:
        if name.endswith(".weight"):
            found.setdefault(module_key(name[: -len(".weight")]), GraphWeight(name, transposed=False))
    return found


def unplaced_weights(graph: Any, weights: Mapping[str, GraphWeight]) -> list[str]:
    """The layer weights of ``graph`` that no module of ``weights`` (``graph_weights``) reaches.

    Empty for our exports and the fusions ``graph_weights`` knows; anything else is a weight a
    LoRA module may belong to but cannot be blended into.
    """
    initializers = {tensor.name for tensor in graph.initializer}
    placed = {weight.initializer for weight in weights.values()}
    layers = {
        node.input[1]
        for node in graph.node
        if node.op_type in (*_WEIGHT_OPS, "Attention") and _reads_weight(node, initializers)
    }
    return sorted(layers - placed)


def _reads_weight(node: Any, initializers: Container[str]) -> bool:
    """Whether a layer node's second input, its weight, is an initializer."""
    return len(node.input) > 1 and node.input[1] in initializers


def _node_scopes(node: Any) -> list[str]:
    """The module path a node's name gives: ``/model/a/b/MatMul`` -> ``[model, a, b]``.

    A node a fusion made in place of another names itself ``<new name>-<replaced node's name>``.
    """
    _, fused, replaced = node.name.partition("-/")
    name = f"/{replaced}" if fused else node.name
    return list(name.strip("/").split("/")[:-1])


def _layer_weights(graph: Any, initializers: Mapping[str, Any]) -> Iterable[tuple[str, GraphWeight]]:
    """Each ``MatMul``/``Gemm``/``Conv``/``NhwcConv`` weight, by the module its node is named for."""
    for node in graph.node:
        if node.op_type not in _WEIGHT_OPS or not _reads_weight(node, initializers):
            continue
        scopes = _node_scopes(node)
        if not scopes:
            continue
        transposed = node.op_type == "MatMul" or (
            node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute)
        )
        channels_last = node.op_type == "NhwcConv"
        yield module_key("/".join(scopes)), GraphWeight(node.input[1], transposed, channels_last)


def _attention_weights(graph: Any, initializers: Mapping[str, Any]) -> Iterable[tuple[str, GraphWeight]]:
    """The q, k and v weights that fused attention nodes hold packed, by their attention module."""
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type not in _ATTENTION_OPS:
            continue
        module = _attention_module(node, consumers)
        packed = _packed_projections(node, producers, initializers)
        if module is None or packed is None:
            continue
        scope, projections = module
        initializer, parts = packed
        for index, part in parts.items():
            yield module_key(f"{scope}/{projections[index]}"), GraphWeight(initializer, True, part=part)


def _attention_module(node: Any, consumers: Mapping[str, list[Any]]) -> tuple[str, tuple[str, ...]] | None:
    """An attention node's module path and the names of its q, k and v projections, read from
    the output projection it feeds (``…/attn1/to_out.0/MatMul``)."""
    for consumer in consumers.get(node.output[0], []):
        scopes = _node_scopes(consumer)
        if scopes and scopes[-1] in _PROJECTIONS:
            return "/".join(scopes[:-1]), _PROJECTIONS[scopes[-1]]
    return None


def _packed_projections(
    node: Any, producers: Mapping[str, Any], initializers: Mapping[str, Any]
) -> tuple[str, dict[int, PackedPart]] | None:
    """The packed weight an attention node reads, and where projection 0 (q), 1 (k), 2 (v) sit in it.

    ``None`` where it reads its projections unpacked (their own nodes, named, hold them) or reads a
    packing of another form.
    """
    if node.op_type == "Attention":
        return _attention_parts(node, initializers)
    # MultiHeadAttention (ONNX Runtime's contrib op): packed q, k, v as its only input, or packed
    # k, v as its key and no value, both ``(batch, sequence, heads, 3 or 2, head_size)``.
    given = [name for name in node.input[:3] if name]
    if len(given) == 3:
        return None
    projections = (0, 1, 2) if len(given) == 1 else (1, 2)
    reshape = producers.get(given[-1])
    matmul = producers.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
    if matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in initializers:
        return None
    heads = next((a.i for a in node.attribute if a.name == "num_heads"), 0)
    columns = int(initializers[matmul.input[1]].dims[-1])
    width, left = divmod(columns, heads * len(projections)) if heads else (0, 1)
    if left:
        return None
    parts = {index: PackedPart(heads, slot * width, width) for slot, index in enumerate(projections)}
    return matmul.input[1], parts


def _attention_parts(node: Any, initializers: Mapping[str, Any]) -> tuple[str, dict[int, PackedPart]] | None:
    """An ``Attention`` node's weight (its second input): ``q | k | v`` side by side, each as wide
    as its ``qkv_hidden_sizes`` says or a third."""
    weight = node.input[1]
    if weight not in initializers:
        return None
    columns = int(initializers[weight].dims[-1])
    sizes = next((list(a.ints) for a in node.attribute if a.name == "qkv_hidden_sizes"), [columns // 3] * 3)
    starts = [0, sizes[0], sizes[0] + sizes[1]]
    return weight, {index: PackedPart(1, starts[index], sizes[index]) for index in range(3)}


def token_embedding_name(graph: Any) -> str:
    """The text encoder's token embedding initializer: the table its token ``Gather`` reads."""
    initializers = {tensor.name for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Gather" and "token_embedding" in node.name and node.input[0] in initializers:
            return str(node.input[0])
    named = [name for name in initializers if name.endswith("token_embedding.weight")]
    if not named:
        raise ValueError("the text encoder graph has no token embedding to add inversions to")
    return named[0]


def _tensor_array(tensor: Any, folder: Path) -> np.ndarray:
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    if uses_external_data(tensor):
        load_external_data_for_tensor(tensor, str(folder))
    return np.array(numpy_helper.to_array(tensor), dtype=np.float32)  # a copy: it is added to


def blend_initializers(path: Path, blend: ComponentBlend) -> Initializers:
    """The changed initializers of graph ``path`` (its weights plus the deltas, its grown embedding)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    tensors = {tensor.name: tensor for tensor in graph.initializer}
    changed = _blend_loras(graph, path, blend) if blend.loras else {}
    reshaped: dict[str, np.ndarray] = {}
    if blend.inversions:
        name = token_embedding_name(graph)
        base = changed.pop(name) if name in changed else _tensor_array(tensors[name], path.parent)
        tokenizer = inversion_tokenizer(path.parent.parent / TOKENIZERS[blend.component], blend.inversions)
        reshaped[name] = embedding_with_inversions(base, tokenizer, blend.inversions, blend.component)
    dtypes = {name: _onnx_dtype(tensors[name]) for name in [*changed, *reshaped]}
    return Initializers(
        same_shape={name: value.astype(dtypes[name]) for name, value in changed.items()},
        reshaped={name: value.astype(dtypes[name]) for name, value in reshaped.items()},
    )


def _blend_loras(graph: Any, path: Path, blend: ComponentBlend) -> dict[str, np.ndarray]:
    """The initializers of ``graph`` (read from ``path``) that ``blend``'s LoRAs change, in float32.

    Raises ``FusedGraphError`` where a LoRA's modules may lie in weights the graph holds in a
    layout ``graph_weights`` does not know.
    """
    tensors = {tensor.name: tensor for tensor in graph.initializer}
    weights = graph_weights(graph)
    unplaced = unplaced_weights(graph, weights)
    changed: dict[str, np.ndarray] = {}
    for network in blend.loras:
        deltas = lora_deltas(network_tensors(network), LORA_PREFIXES[blend.component])
        unmatched = [module for module in deltas if module not in weights]
        if unmatched and unplaced:
            raise FusedGraphError(
                f"LoRA {network.name}: {len(unmatched)} of {len(deltas)} {blend.component} modules "
                f"({', '.join(unmatched[:4])}{', …' if len(unmatched) > 4 else ''}) have no place in the "
                f"graph of model {path.parent.parent.name}, whose weights {', '.join(unplaced[:4])} "
                "no module name reaches (fused in a layout this version does not know)"
            )
        if unmatched:
            logger.warning(
                "LoRA %s: %d of %d %s modules have no weight in the graph (first: %s)",
                network.name,
                len(unmatched),
                len(deltas),
                blend.component,
                unmatched[0],
            )
        for module, delta in deltas.items():
            target = weights.get(module)
            if target is None:
                continue
            if target.initializer not in changed:
                changed[target.initializer] = _tensor_array(tensors[target.initializer], path.parent)
            target.add(changed[target.initializer], np.float32(network.weight) * delta.astype(np.float32))
        logger.debug("LoRA %s: %d %s weights blended", network.name, len(deltas), blend.component)
    return changed


def _onnx_dtype(tensor: Any) -> Any:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(tensor.data_type)


# --- textual inversions -----------------------------------------------------------------------


def inversion_vectors(
    tensors: Mapping[str, np.ndarray], name: str, weight: float, component: str = "text_encoder"
) -> dict[str, np.ndarray]:
    """The tokens one embedding file makes and their vectors (scaled by ``weight``), in order.

    Formats: a concept (``{"<token>": vector}``, sd-concepts-library), ``emb_params`` (Civitai
    safetensors), ``string_to_param.*`` (A1111 ``.pt``), and SDXL's ``clip_l``/``clip_g``.
    Every format but a concept makes ``name-0`` … ``name-N``, ``name`` and ``name-all`` (the sum),
    even for one vector, as onnx-web does, so a prompt written for onnx-web finds its tokens; a
    one-vector concept makes ``name`` and the concept's own token.
    """
    sdxl_key = SDXL_EMBEDDING_KEYS.get(component)
    concept: str | None = None
    if sdxl_key is not None and sdxl_key in tensors:
        vectors = tensors[sdxl_key]
    elif "emb_params" in tensors:
        vectors = tensors["emb_params"]
    elif params := [key for key in tensors if key.startswith("string_to_param.")]:
        vectors = tensors[params[0]]
    elif len(tensors) == 1:
        concept, vectors = next(iter(tensors.items()))
    else:
        raise ValueError(f"inversion {name!r}: unknown embedding format (keys {sorted(tensors)[:5]})")
    vectors = np.atleast_2d(vectors) * np.float32(weight)
    total = vectors.sum(axis=0)
    if concept is not None and len(vectors) == 1:
        made = {name: total}
    else:
        made = {f"{name}-{index}": vector for index, vector in enumerate(vectors)}
        made.update({name: total, f"{name}-all": total})
    if concept is not None and concept != name:
        made[concept] = total
    return made


def inversion_tokens(inversions: Sequence[NetworkFile], component: str) -> dict[str, np.ndarray]:
    """Every token the inversions make, vectors of a token made twice summed."""
    tokens: dict[str, np.ndarray] = {}
    for network in inversions:
        for token, vector in inversion_vectors(
            network_tensors(network), network.name, network.weight, component
        ).items():
            tokens[token] = tokens[token] + vector if token in tokens else vector
    return tokens


@lru_cache(maxsize=16)
def inversion_tokenizer(folder: Path, inversions: tuple[NetworkFile, ...]) -> Any:
    """The tokenizer of ``folder`` with the inversions' tokens added (new ids after the vocabulary)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    component = next(name for name, tokens in TOKENIZERS.items() if tokens == folder.name)
    tokenizer.add_tokens(list(inversion_tokens(inversions, component)))
    return tokenizer


def embedding_with_inversions(
    embedding: np.ndarray, tokenizer: Any, inversions: Sequence[NetworkFile], component: str
) -> np.ndarray:
    """The token embedding with a row per inversion token, at the token's id in ``tokenizer``.

    A token already in the vocabulary has its row replaced, as onnx-web does.
    """
    rows = max(len(tokenizer), embedding.shape[0])
    grown = np.zeros((rows, embedding.shape[1]), dtype=np.float32)
    grown[: embedding.shape[0]] = embedding
    for token, vector in inversion_tokens(inversions, component).items():
        if vector.shape[-1] != embedding.shape[1]:
            raise ValueError(
                f"inversion token {token!r} has {vector.shape[-1]} dimensions, "
                f"the text encoder {embedding.shape[1]}"
            )
        grown[tokenizer.convert_tokens_to_ids(token)] = vector
    return grown
