"""One worker per GPU: ``onnx-web worker --device N`` pins every session and the GPU runtime to N."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime
import pytest

import pipelines.gpu.runtime as runtime
import service.stack
from pipelines.models.sessions import CPU_PROVIDER, CUDA_PROVIDER
from service.cli import build_parser, main, worker_config
from service.config import Config
from service.errors import ConfigError
from service.stack import StackOptions
from service.worker import Worker, worker_sessions


class RecordedSession:
    """Stands in for ``onnxruntime.InferenceSession``: records the providers each session got."""

    created: list[tuple[str, list[Any]]] = []

    def __init__(self, path: str, sess_options: Any = None, providers: list[Any] | None = None) -> None:
        self.created.append((path, list(providers or [])))


@pytest.fixture
def cuda_here(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[Any]]]:
    """ONNX Runtime and torch look as if they had CUDA; sessions are recorded, never loaded."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    monkeypatch.setattr(onnxruntime, "InferenceSession", RecordedSession)
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    monkeypatch.setattr(runtime, "device_memory_used", lambda device_id: 0)
    monkeypatch.setattr(RecordedSession, "created", [])
    return RecordedSession.created


def cli_worker_sessions(argv: list[str], environ: dict[str, str]) -> Any:
    """The session cache ``onnx-web worker`` builds for ``argv``, without starting its loop."""
    args = build_parser().parse_args(["worker", *argv])
    return worker_sessions(worker_config(args, environ))


def test_device_flag_reaches_every_session_and_the_gpu_runtime(
    cuda_here: list[tuple[str, list[Any]]], tmp_path: Path
) -> None:
    sessions = cli_worker_sessions(["--device", "3"], {"ONNX_WEB_WORKER_PLATFORM": "cuda"})
    for name in ("upscaler.onnx", "face.onnx"):
        (tmp_path / name).write_bytes(b"")
        sessions.get(tmp_path / name)

    assert [Path(path).name for path, _ in cuda_here] == ["upscaler.onnx", "face.onnx"]
    for _, providers in cuda_here:
        assert providers == [(CUDA_PROVIDER, {"device_id": 3}), CPU_PROVIDER]
    settings = runtime.gpu_settings(sessions)
    assert settings is not None and settings.device_id == 3


def test_the_flag_wins_over_the_environment_and_the_default_is_device_0(
    cuda_here: list[tuple[str, list[Any]]],
) -> None:
    cuda = {"ONNX_WEB_WORKER_PLATFORM": "cuda"}
    assert cli_worker_sessions(["--device", "1"], {**cuda, "ONNX_WEB_DEVICE": "2"}).settings.device_id == 1
    assert cli_worker_sessions([], {**cuda, "ONNX_WEB_DEVICE": "2"}).settings.device_id == 2
    assert cli_worker_sessions([], cuda).settings.device_id == 0


def test_fuse_conv_bias_reaches_the_cuda_graphs_sessions_only(
    cuda_here: list[tuple[str, list[Any]]], tmp_path: Path
) -> None:
    cuda = {"ONNX_WEB_WORKER_PLATFORM": "cuda"}
    default = runtime.gpu_settings(cli_worker_sessions([], cuda))
    assert default is not None and default.fuse_conv_bias is None  # auto: chosen at the warm-up
    fused = runtime.gpu_settings(cli_worker_sessions([], {**cuda, "ONNX_WEB_CUDA_FUSE_CONV_BIAS": "true"}))
    assert fused is not None and fused.fuse_conv_bias is True
    assert runtime.cuda_provider_options(default, graph=True, stream=7) == {
        "device_id": "0",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "fuse_conv_bias": "1",
        "enable_cuda_graph": "1",
        "user_compute_stream": "7",
    }

    sessions = cli_worker_sessions(["--device", "1"], {**cuda, "ONNX_WEB_CUDA_FUSE_CONV_BIAS": "false"})
    settings = runtime.gpu_settings(sessions)
    assert settings is not None and settings.fuse_conv_bias is False and settings.device_id == 1
    options = runtime.cuda_provider_options(settings, graph=False, stream=None)
    assert options["fuse_conv_bias"] == "0" and options["device_id"] == "1"
    assert "enable_cuda_graph" not in options and "user_compute_stream" not in options
    # A bench variant's own provider options still have the last word.
    overridden = runtime.GpuSettings(fuse_conv_bias=False, provider_options={"fuse_conv_bias": "1"})
    assert runtime.cuda_provider_options(overridden, graph=True, stream=None)["fuse_conv_bias"] == "1"
    # The worker's other CUDA sessions keep ONNX Runtime's own default.
    (tmp_path / "upscaler.onnx").write_bytes(b"")
    sessions.get(tmp_path / "upscaler.onnx")
    assert cuda_here[-1][1] == [(CUDA_PROVIDER, {"device_id": 1}), CPU_PROVIDER]


def test_an_unclear_fuse_conv_bias_stops_the_worker_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"ONNX_WEB_CUDA_FUSE_CONV_BIAS: expected a boolean .*, or auto"):
        Config.from_env({"ONNX_WEB_CUDA_FUSE_CONV_BIAS": "sometimes"})


def test_fuse_conv_bias_auto_leaves_the_choice_to_the_warm_up(cuda_here: list[tuple[str, list[Any]]]) -> None:
    """``auto`` reaches the GPU runtime as None; until a capture has timed both, sessions fuse."""
    sessions = cli_worker_sessions(
        [], {"ONNX_WEB_WORKER_PLATFORM": "cuda", "ONNX_WEB_CUDA_FUSE_CONV_BIAS": " Auto"}
    )
    settings = runtime.gpu_settings(sessions)
    assert settings is not None and settings.fuse_conv_bias is None
    assert runtime.cuda_provider_options(settings, graph=True, stream=None)["fuse_conv_bias"] == "1"


def test_median_times_takes_the_runs_in_turn_and_reports_each_median() -> None:
    """The variants alternate, so a clock change mid-way falls on both; each gets its own median."""
    now = [0.0]
    order: list[str] = []
    durations = {"fused": iter([0.007, 0.007, 0.020]), "separate": iter([0.006, 0.030, 0.006])}
    synchronized: list[int] = []

    def run(name: str) -> None:
        order.append(name)
        now[0] += next(durations[name])

    times = runtime.median_times(
        {True: lambda: run("fused"), False: lambda: run("separate")},
        3,
        lambda: synchronized.append(1),
        clock=lambda: now[0],
    )
    assert order == ["fused", "separate"] * 3
    assert times == pytest.approx({True: 7.0, False: 6.0})
    assert len(synchronized) == 12  # before and after every run: the GPU's work is inside the time


class NoStream:
    def synchronize(self) -> None:
        pass


def choosing_session(captures: dict[bool, bool]) -> tuple[runtime.CudaSession, list[bool]]:
    """A ``CudaSession`` with ``auto`` whose static-run capture succeeds or fails per variant as
    ``captures`` says (a failed one as ONNX Runtime's out-of-memory would)."""
    session = runtime.CudaSession.__new__(runtime.CudaSession)
    session.path, session.stream = Path("/models/demo/unet/model.onnx"), NoStream()
    session.settings = runtime.GpuSettings(fuse_conv_bias=None)
    session.fuse_conv_bias, session.fuse_conv_bias_timings = None, {}
    tried: list[bool] = []

    def static_run(overrides: Any, inputs: Any, output_shapes: Any, fuse_conv_bias: bool) -> Any:
        tried.append(fuse_conv_bias)
        if not captures[fuse_conv_bias]:
            raise RuntimeError("Failed to allocate memory for requested buffer")
        return f"run fused={fuse_conv_bias}"

    session._static_run = static_run  # type: ignore[method-assign]
    return session, tried


def test_auto_keeps_the_variant_that_could_be_captured_where_the_other_could_not() -> None:
    """Timing needs both variants on the GPU at once; where memory allows one, that one is kept
    for this shape and every later one, rather than the bucket losing its graph."""
    session, tried = choosing_session({True: False, False: True})
    assert session._choose_fuse_conv_bias({}, {}, {}) == "run fused=False"
    assert tried == [True, False]
    assert session.fuse_conv_bias is False and session.fuse_conv_bias_timings == {}

    session, _ = choosing_session({True: False, False: False})
    with pytest.raises(RuntimeError, match="neither fuse_conv_bias variant could be captured"):
        session._choose_fuse_conv_bias({}, {}, {})
    assert session.fuse_conv_bias is None  # the next shape tries again


class RecordingJobs:
    """The part of ``JobStore`` a worker's announcement uses."""

    def __init__(self) -> None:
        self.announced: list[dict[str, Any]] = []

    def announce_worker(self, worker_id: str, **row: Any) -> bool:
        self.announced.append(row)
        return False


def test_a_cuda_worker_announces_its_device(cuda_here: list[tuple[str, list[Any]]]) -> None:
    config = Config(worker_platform="cuda", device=3)
    jobs = RecordingJobs()
    worker = Worker(config, jobs=jobs, store=None, sessions=worker_sessions(config), notifier=None)  # type: ignore[arg-type]
    worker._announce()

    assert jobs.announced[0]["device"] == 3


def test_a_cpu_worker_announces_no_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    config = Config(worker_platform="cpu", device=1)
    jobs = RecordingJobs()
    Worker(config, jobs=jobs, store=None, sessions=worker_sessions(config), notifier=None)._announce()  # type: ignore[arg-type]

    assert jobs.announced[0]["device"] is None


def test_a_negative_device_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["worker", "--device", "-1"])
    assert exited.value.code == 2
    assert "--device: must be a CUDA device index" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="device must be a CUDA device index"):
        Config.from_env({"ONNX_WEB_DEVICE": "-1"})


def test_workers_per_gpu_without_a_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_stack(options: StackOptions) -> None:
        raise AssertionError("the stack must not start without a GPU")

    monkeypatch.setattr(service.stack, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(service.stack, "LocalStack", no_stack)
    with pytest.raises(SystemExit) as exited:
        main(["run", "--workers-per-gpu", "2"])
    assert "--workers-per-gpu needs CUDA devices, and torch found none" in str(exited.value.code)


def test_workers_per_gpu_starts_k_workers_on_each_device() -> None:
    options = StackOptions(data_dir=Path("var"), port=5000, workers=5, workers_per_gpu=2, gpus=2)
    assert options.worker_devices() == [0, 0, 1, 1]
    assert StackOptions(data_dir=Path("var"), port=5000, workers=3).worker_devices() == [None, None, None]


def test_warm_sizes_name_batched_and_unguided_shapes(
    cuda_here: list[tuple[str, list[Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ONNX_WEB_WARM_SIZES`` reaches the CUDA runtime as buckets: batched jobs and cfg-1 jobs
    (turbo, LCM-LoRA) get CUDA graphs of their own UNet shapes instead of the dynamic session."""
    import pipelines.diffusion.model as model_module

    warmed: list[tuple[str, list[runtime.Bucket]]] = []
    monkeypatch.setattr(model_module, "load_model", lambda path, name, sessions: name)

    def warm_up(model: str, buckets: list[runtime.Bucket]) -> list[runtime.Bucket]:
        warmed.append((model, list(buckets)))
        return []

    monkeypatch.setattr(runtime, "warm_up", warm_up)
    config = Config.from_env(
        {
            "ONNX_WEB_WORKER_PLATFORM": "cuda",
            "ONNX_WEB_WARM_MODELS": "sd15",
            "ONNX_WEB_WARM_SIZES": "512x512,768x512x4,512x512-unguided,1024x1024x2-unguided",
        }
    )
    Worker(
        config, jobs=RecordingJobs(), store=None, sessions=worker_sessions(config), notifier=None
    ).warm_up()  # type: ignore[arg-type]

    assert warmed == [
        (
            "sd15",
            [
                runtime.Bucket(512, 512, 1, guidance=True),
                runtime.Bucket(768, 512, 4, guidance=True),
                runtime.Bucket(512, 512, 1, guidance=False),
                runtime.Bucket(1024, 1024, 2, guidance=False),
            ],
        )
    ]
    assert [bucket.unet_batch for bucket in warmed[0][1]] == [2, 8, 1, 2]


@pytest.mark.parametrize("size", ["512", "512x512x0", "512x512x100", "512x512-cfg1", "512x512 x4"])
def test_a_malformed_warm_size_is_refused_with_the_forms_it_takes(size: str) -> None:
    with pytest.raises(
        ConfigError, match=r"warm sizes must look like 512x512, 512x512x4 .* or 512x512-unguided"
    ):
        Config.from_env({"ONNX_WEB_WARM_SIZES": size})


def test_the_warm_up_log_says_how_much_of_the_gpu_is_in_use(
    cuda_here: list[tuple[str, list[Any]]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Operators size models and workers per GPU from it: the device's memory in use once warmed."""
    import pipelines.diffusion.model as model_module

    asked: list[int] = []
    monkeypatch.setattr(model_module, "load_model", lambda path, name, sessions: name)
    monkeypatch.setattr(runtime, "warm_up", lambda model, buckets: [])
    monkeypatch.setattr(runtime, "device_memory_used", lambda device: asked.append(device) or 11 * 2**29)
    config = Config.from_env(
        {"ONNX_WEB_WORKER_PLATFORM": "cuda", "ONNX_WEB_WARM_MODELS": "sd15,sdxl", "ONNX_WEB_DEVICE": "1"}
    )
    caplog.set_level("INFO", logger="service.worker")
    Worker(
        config, jobs=RecordingJobs(), store=None, sessions=worker_sessions(config), notifier=None
    ).warm_up()  # type: ignore[arg-type]

    warmed = [record for record in caplog.records if record.getMessage() == "model warmed up"]
    assert [(record.model, record.gpu_used_gib) for record in warmed] == [("sd15", 5.5), ("sdxl", 5.5)]
    assert asked == [1, 1]
