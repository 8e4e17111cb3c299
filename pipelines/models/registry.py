"""What the models folder holds: model lists, extras (labels, hashes, tokens, strings), wildcards.

The api imports this module, so it must never import torch or onnxruntime.

Layout (contract §5.3, §11):

- ``diffusion``: top-level entries named ``diffusion-*`` or ``stable-diffusion-*``, then entries of
  ``diffusion/``. ``correction``: ``correction-*`` then ``correction/``. ``upscaling``:
  ``upscaling-*`` then ``upscaling/``. Networks: ``control/``, ``inversion/``, ``lora/``. Source
  filter annotators: ``filter/<model>/model.onnx`` (``filter_models``).
- A model's name is its basename, without the extension for files (``upscaling-x4.onnx`` is
  ``upscaling-x4``). NOTE(registry): onnx-web also strips a "extension" from directory names, so a
  folder ``stable-diffusion-v1.5`` was listed as ``stable-diffusion-v1`` and could not be loaded;
  directories keep their full name here.
- Names ending ``.crdownload``, ``.lock`` or ``.tmp`` (downloads in progress) and hidden entries
  are ignored. Each list is sorted and de-duplicated.
- Models found in a sub-folder are listed by bare name; requests may name them either way
  (``foo`` or ``diffusion/foo``): ``find_model`` answers with the path below the models folder
  (contract §14 item 28, where onnx-web only accepted the prefixed form).

Extras files (§11.2) are JSON or YAML. ``<models>/extras.json`` is read when no file is configured.
A file that cannot be read, is not an object, has unknown top-level keys or wrongly typed sections,
or whose ``strings`` conflict with an earlier file's, is logged and skipped as a whole; entries that
are not objects with a string ``name`` (onnx-web's legacy tuples) are skipped one by one.

``reload()`` rebuilds everything and swaps it in with one assignment, so a request running
concurrently sees either the old or the new state, never a mix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipelines.diffusion.wildcards import load_wildcards
from pipelines.imageops.annotators import installed_models

logger = logging.getLogger(__name__)

ModelKind = Literal["diffusion", "correction", "upscaling", "text", "safety"]
NetworkType = Literal["control", "inversion", "lora"]
#: Diffusion model families the workers tell apart: Stable Diffusion 1.x/2.x, and SDXL.
ModelFamily = Literal["sd", "sdxl"]

#: Top-level name patterns of each model kind; the kind's name is also its sub-folder.
KIND_PREFIXES: dict[ModelKind, tuple[str, ...]] = {
    "diffusion": ("diffusion-", "stable-diffusion-"),
    "correction": ("correction-",),
    "upscaling": ("upscaling-",),
    # GPT-2 text models (txt2txt, text-prompt) and image safety classifiers (edit-safety).
    "text": ("text-",),
    "safety": ("safety-",),
}
NETWORK_TYPES: tuple[NetworkType, ...] = ("control", "inversion", "lora")
IGNORED_SUFFIXES = (".crdownload", ".lock", ".tmp")
DEFAULT_EXTRAS_FILE = "extras.json"
WILDCARD_FOLDER = "wildcard"
HASH_FILE = "hash.txt"
UNKNOWN_HASH = "unknown"
#: Extras sections holding lists of entries; ``strings`` is the only other allowed key.
EXTRAS_LISTS = ("diffusion", "correction", "upscaling", "networks", "sources")
#: Diffusion names with these prefixes get no ``diffusion-`` prefix in their label key.
LABEL_PREFIXES = ("diffusion-", "diffusion/", "diffusion\\", "stable-diffusion-", "upscaling-")


class ExtrasError(ValueError):
    """An extras file is malformed; the message says where."""


@dataclass(frozen=True)
class Network:
    """A ControlNet, textual inversion or LoRA found in the models folder."""

    name: str
    type: NetworkType
    #: Prompt tokens from the extras file (always empty for ControlNets).
    tokens: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The ``/api/settings/models`` form: ``{"name", "tokens", "type"}``."""
        return {"name": self.name, "tokens": list(self.tokens), "type": self.type}


@dataclass(frozen=True)
class PublishedModel:
    """A model of the model store (``service.modelstore``): listed and accepted like a folder's own,
    pulled by the worker that runs it. Its facts come from the store's registry, not from files."""

    name: str
    #: A model kind or a network type.
    kind: str
    #: Where it sits below a models folder (``stable-diffusion-x``, ``upscaling-x4.onnx``).
    path: str
    family: ModelFamily
    size_bytes: int


@dataclass
class _Extras:
    """What the server takes from extras files."""

    hashes: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, tuple[str, ...]] = field(default_factory=dict)
    strings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Snapshot:
    """One consistent view of the models folder, replaced as a whole by ``reload``."""

    models: dict[ModelKind, tuple[str, ...]]
    #: kind -> name a request may send -> path below the models folder (``foo`` or ``diffusion/foo``).
    paths: dict[ModelKind, dict[str, str]]
    networks: tuple[Network, ...]
    extras: _Extras
    wildcards: dict[str, tuple[str, ...]]
    #: Annotator models of the model-based source filters (``filter/<model>/model.onnx``).
    filter_models: tuple[str, ...] = ()


class ModelRegistry:
    """Scans a models folder and its extras files; the api's view of which models exist."""

    def __init__(self, models_path: Path, extra_models: Sequence[Path] = ()) -> None:
        """Scan ``models_path`` now.

        Raises:
            FileNotFoundError: ``models_path`` is not a directory (onnx-web refuses to start then).
        """
        self.models_path = Path(models_path)
        self._extra_models = tuple(Path(path) for path in extra_models)
        self._published: tuple[PublishedModel, ...] = ()
        #: The extras document stored through ``PUT /api/extras`` (read after the files).
        self._stored_extras: Mapping[str, Any] | None = None
        self._snapshot = self._scan()
        #: Family and size of the models asked about, read once per scan: the api asks at every
        #: submission (``service.admission``), and a model's files do not change under it.
        self._model_facts: dict[str, tuple[ModelFamily, int]] = {}

    @property
    def extras_files(self) -> tuple[Path, ...]:
        """The extras files read: the configured ones, else ``<models>/extras.json`` if it exists."""
        if self._extra_models:
            return self._extra_models
        default = self.models_path / DEFAULT_EXTRAS_FILE
        return (default,) if default.is_file() else ()

    def reload(self) -> None:
        """Scan the models folder, extras files and wildcards again."""
        self._snapshot = self._scan()
        self._model_facts = {}

    def models(self) -> dict[str, Any]:
        """The ``/api/settings/models`` document."""
        snapshot = self._snapshot
        return {
            "correction": list(snapshot.models["correction"]),
            "diffusion": list(snapshot.models["diffusion"]),
            "networks": [network.to_dict() for network in snapshot.networks],
            "upscaling": list(snapshot.models["upscaling"]),
        }

    def names(self, kind: ModelKind) -> tuple[str, ...]:
        """Listed names of one model kind, in listing order."""
        return self._snapshot.models[kind]

    def networks(self, network_type: NetworkType | None = None) -> tuple[Network, ...]:
        """Networks, all or of one type."""
        return tuple(n for n in self._snapshot.networks if network_type in (None, n.type))

    def find_model(self, kind: ModelKind, name: str) -> str | None:
        """The path below the models folder of a listed model, or ``None`` if there is none.

        ``name`` is what a request sends: a listed name, or ``<kind>/<name>`` for a model in the
        kind's sub-folder. A bare name that is only in the sub-folder resolves to ``<kind>/<name>``.
        """
        return self._snapshot.paths[kind].get(name)

    def find_network(self, network_type: NetworkType, name: str) -> Network | None:
        """The network of that type and name, or ``None``."""
        return next((n for n in self.networks(network_type) if n.name == name), None)

    def filter_models(self) -> tuple[str, ...]:
        """The annotator models installed for the model-based source filters (``depth``, ``hed``, …)."""
        return self._snapshot.filter_models

    def wildcards(self) -> Mapping[str, tuple[str, ...]]:
        """Wildcard lists by name, in the order they were found."""
        return self._snapshot.wildcards

    def strings(self) -> dict[str, Any]:
        """The ``/api/settings/strings`` document: extras strings plus model labels (§5.8).

        Labels go under ``en.translation.model``; a label the extras' own ``strings`` already set
        is left as the strings say, since those were written for that language on purpose.
        """
        extras = self._snapshot.extras
        merged = json.loads(json.dumps(extras.strings))  # a private copy the caller may keep
        model = merged.setdefault("en", {}).setdefault("translation", {}).setdefault("model", {})
        for key, label in extras.labels.items():
            model.setdefault(key, label)
        return merged

    def extras_hash(self, name: str) -> str | None:
        """The ``hash`` the extras (files or the stored document) give ``name`` or its last part."""
        hashes = self._snapshot.extras.hashes
        return next((hashes[key] for key in (name, Path(name).name) if key in hashes), None)

    def model_hash(self, name: str) -> str:
        """A model's hash: the extras ``hash``, else the first line of ``hash.txt``, else "unknown"."""
        listed = self.extras_hash(name)
        if listed is not None:
            return listed
        try:
            lines = (self.resolve(name) / HASH_FILE).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return UNKNOWN_HASH
        return lines[0].strip() if lines and lines[0].strip() else UNKNOWN_HASH

    def family(self, name: str) -> ModelFamily:
        """The family of the diffusion model at ``name`` (a path ``find_model`` returned)."""
        return self._facts(name)[0]

    def model_bytes(self, name: str) -> int:
        """The size of a model's files (a folder's summed); 0 for one that is not there."""
        return self._facts(name)[1]

    def unet_channels(self, name: str) -> int | None:
        """Input channels of the UNet of the model at ``name``, or ``None`` where its folder does not say."""
        return unet_in_channels(self.resolve(name))

    def set_published(self, published: Sequence[PublishedModel]) -> None:
        """List the model store's ready models after the folder's own (the folder wins a name)."""
        published = tuple(published)
        if published != self._published:
            self._published = published
            self.reload()

    def set_stored_extras(self, document: Mapping[str, Any] | None) -> None:
        """Take labels, hashes, tokens and strings from the stored extras document too.

        Its strings win over the files' where both set a leaf: it is the newer, edited catalogue.
        """
        if document != self._stored_extras:
            self._stored_extras = document
            self.reload()

    def _facts(self, name: str) -> tuple[ModelFamily, int]:
        facts = self._model_facts.get(name)
        if facts is None and not self.resolve(name).exists():
            facts = next(
                ((p.family, p.size_bytes) for p in self._published if _published_name(p) == name), None
            )
        if facts is None:
            path = self.resolve(name)
            files = [path] if path.is_file() else [item for item in path.rglob("*") if item.is_file()]
            facts = (model_family(path), sum(item.stat().st_size for item in files))
            self._model_facts[name] = facts
        return facts

    def resolve(self, name: str) -> Path:
        """Join a request's model name onto the models folder without ever leaving it.

        ``..``, ``.`` and empty parts are dropped and both separators are honoured, so ``../x``
        and ``/x`` both mean ``<models>/x`` (onnx-web's traversal-safe join).
        """
        parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".", "..")]
        return self.models_path.joinpath(*parts)

    def _scan(self) -> _Snapshot:
        if not self.models_path.is_dir():
            raise FileNotFoundError(f"the models folder {self.models_path} does not exist")
        extras = _load_all_extras(self.extras_files)
        if self._stored_extras is not None:
            stored = _extras_of(self._stored_extras, "the stored extras document")
            extras.strings = _overlay(extras.strings, stored.strings)
            extras.hashes.update(stored.hashes)
            extras.labels.update(stored.labels)
            extras.tokens.update(stored.tokens)
        top = _entries(self.models_path)
        models: dict[ModelKind, tuple[str, ...]] = {}
        paths: dict[ModelKind, dict[str, str]] = {}
        for kind, prefixes in KIND_PREFIXES.items():
            listed = [name for name in top if name.startswith(prefixes)]
            kind_paths = {name: name for name in listed}
            for name in _entries(self.models_path / kind):
                kind_paths[f"{kind}/{name}"] = f"{kind}/{name}"
                kind_paths.setdefault(name, f"{kind}/{name}")
                listed.append(name)
            for published in self._published:
                if published.kind == kind and published.name not in kind_paths:
                    kind_paths[published.name] = _published_name(published)
                    listed.append(published.name)
            paths[kind] = kind_paths
            models[kind] = tuple(dict.fromkeys(listed))
        networks = tuple(
            Network(name, network_type, () if network_type == "control" else extras.tokens.get(name, ()))
            for network_type in NETWORK_TYPES
            for name in _entries(self.models_path / network_type)
        )
        local_networks = {(network.type, network.name) for network in networks}
        networks += tuple(
            Network(p.name, p.kind, () if p.kind == "control" else extras.tokens.get(p.name, ()))
            for p in self._published
            if p.kind in NETWORK_TYPES and (p.kind, p.name) not in local_networks
        )
        wildcards = load_wildcards(self.models_path / WILDCARD_FOLDER)
        return _Snapshot(models, paths, networks, extras, wildcards, installed_models(self.models_path))


def _published_name(model: PublishedModel) -> str:
    """The path a request's model name resolves to, as ``find_model`` gives it (files without
    ``.onnx``, as the stages add it)."""
    return model.path.removesuffix(".onnx")


def model_family(folder: Path) -> ModelFamily:
    """``sdxl`` when the folder's ``model_index.json`` names an XL pipeline class, else ``sd``."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return "sd"
    return "sdxl" if isinstance(index, dict) and "XL" in str(index.get("_class_name", "")) else "sd"


def unet_config(folder: Path, key: str) -> int | None:
    """An integer of the diffusers config our converter copies beside the UNet (``unet/config.json``).

    ``None`` where the folder lacks the config (converted elsewhere) or the key: then only the
    worker, which reads the ONNX graph, can tell.
    """
    try:
        config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    value = config.get(key) if isinstance(config, dict) else None
    return value if isinstance(value, int) else None


def unet_in_channels(folder: Path) -> int | None:
    """The UNet's input channels: 4, 9 for inpainting, 8 for InstructPix2Pix (``unet_config``)."""
    return unet_config(folder, "in_channels")


def _entries(folder: Path) -> list[str]:
    """Sorted, de-duplicated model names of the entries in ``folder`` (none if it is missing)."""
    if not folder.is_dir():
        return []
    names = {
        entry.name if entry.is_dir() else entry.stem
        for entry in folder.iterdir()
        if not entry.name.startswith(".") and not entry.name.endswith(IGNORED_SUFFIXES)
    }
    return sorted(names)


def _load_all_extras(files: Iterable[Path]) -> _Extras:
    total = _Extras()
    for path in files:
        try:
            extras = _read_extras(path)
            strings = _merge(total.strings, extras.strings, where="strings")
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
            logger.warning("skipping extras file %s: %s", path, err)
            continue
        total.strings = strings
        total.hashes.update(extras.hashes)
        total.labels.update(extras.labels)
        total.tokens.update(extras.tokens)
    return total


def _read_extras(path: Path) -> _Extras:
    """Parse and check one extras file.

    Raises:
        ExtrasError: the file is not an extras document.
    """
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        data = yaml.safe_load(text)
    _check_extras(data)
    return _extras_of(data, str(path))


def _extras_of(data: Mapping[str, Any], where: str) -> _Extras:
    """The hashes, labels, tokens and strings of a checked extras document."""
    extras = _Extras(strings=dict(data.get("strings", {})))
    for section in ("diffusion", "correction", "upscaling", "networks"):
        for entry in data.get(section, []):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                logger.warning("%s: skipping a %s entry without a name: %.80r", where, section, entry)
                continue
            _collect(extras, section, entry)
    return extras


def _overlay(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two string trees; ``top`` wins where both set a leaf."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        merged[key] = _overlay(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged


def _check_extras(data: Any) -> None:
    if not isinstance(data, dict):
        raise ExtrasError("the top level must be an object")
    unknown = sorted(str(key) for key in data if key not in (*EXTRAS_LISTS, "strings"))
    if unknown:
        raise ExtrasError(f"unknown top-level keys: {', '.join(unknown)}")
    for section in EXTRAS_LISTS:
        if not isinstance(data.get(section, []), list):
            raise ExtrasError(f"{section} must be a list")
    strings = data.get("strings", {})
    if not isinstance(strings, dict) or not all(
        isinstance(lang, str) and len(lang) == 2 and isinstance(tree, dict) for lang, tree in strings.items()
    ):
        raise ExtrasError("strings must map two-letter language codes to objects")


def _collect(extras: _Extras, section: str, entry: Mapping[str, Any]) -> None:
    """Take the hash, label and tokens of one extras entry."""
    name: str = entry["name"]
    if isinstance(entry.get("hash"), str):
        extras.hashes[name] = entry["hash"]
    tokens = entry.get("tokens")
    if section == "networks" and isinstance(tokens, list):
        extras.tokens[name] = tuple(str(token) for token in tokens)
    if isinstance(entry.get("label"), str):
        extras.labels[_label_key(section, entry)] = entry["label"]
    if section == "diffusion":
        for nested_type in ("inversions", "loras"):
            nested_entries = entry.get(nested_type)
            for nested in nested_entries if isinstance(nested_entries, list) else []:
                if (
                    isinstance(nested, dict)
                    and isinstance(nested.get("name"), str)
                    and isinstance(nested.get("label"), str)
                ):
                    extras.labels[f"{nested_type[:-1]}.{nested['name']}"] = nested["label"]


def _label_key(section: str, entry: Mapping[str, Any]) -> str:
    """Where a label goes under ``en.translation.model`` (contract §5.8)."""
    name: str = entry["name"]
    if isinstance(entry.get("type"), str):
        return f"{entry['type']}.{name}"
    if section == "diffusion" and not name.startswith(LABEL_PREFIXES):
        return f"diffusion-{name}"
    return name


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Deep-merge two string trees into a new one.

    Raises:
        ExtrasError: both trees set the same leaf to different values.
    """
    merged = dict(base)
    for key, value in extra.items():
        path = f"{where}.{key}"
        if key in merged and isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = _merge(merged[key], value, where=path)
        elif key in merged and merged[key] != value:
            raise ExtrasError(f"{path} conflicts with an earlier extras file")
        else:
            merged[key] = value
    return merged
