"""What a worker's conversion jobs are allowed and asked to do, from its configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.config import Config
from service.conversion import ConversionFailed, ConversionSettings


def test_cuda_workers_also_make_the_fused_variant_unless_told_otherwise(tmp_path: Path) -> None:
    def variants(**config: Any) -> tuple[str, ...]:
        return ConversionSettings.from_config(Config(models_path=tmp_path, **config)).variants

    assert variants() == ("fp32",)
    assert variants(worker_platform="cuda") == ("fp32", "cuda")
    assert variants(worker_platform="cuda", convert_variants=("fp32",)) == ("fp32",)
    assert variants(convert_variants=("fp32", "cuda")) == ("fp32", "cuda")


def test_sources_are_confined_to_the_import_folder_and_pickles_need_leave(tmp_path: Path) -> None:
    settings = ConversionSettings.from_config(
        Config(models_path=tmp_path, model_cache_path=tmp_path / "cache")
    )
    assert settings.sources.import_root == tmp_path and not settings.sources.allow_pickle
    allowed = ConversionSettings.from_config(
        Config(models_path=tmp_path, import_path=tmp_path / "imports", allow_pickle=True)
    )
    assert allowed.sources.import_root == tmp_path / "imports" and allowed.sources.allow_pickle


def test_only_failed_downloads_are_worth_another_attempt() -> None:
    assert ConversionFailed("download_failed", "503").retryable
    for code in (
        "source_missing",
        "bad_source",
        "hash_mismatch",
        "too_large",
        "pickle_refused",
        "bad_checkpoint",
    ):
        assert not ConversionFailed(code, "no").retryable
