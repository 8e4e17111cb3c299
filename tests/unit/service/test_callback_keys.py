"""Keys mode's callback keys: one per owner, derived from ``ONNX_WEB_CALLBACK_SECRET``, printed by
``onnx-web keys`` (``tests/integration/test_callbacks.py`` checks what the dispatcher signs with)."""

from __future__ import annotations

import pytest

from service.callbacks import owner_signing_key
from service.cli import main


def test_each_owner_gets_its_own_key_and_the_secret_decides_them_all() -> None:
    keys = {owner_signing_key("s1", owner) for owner in ("alice", "bob", "alice ", "ALICE")}
    assert len(keys) == 4 and "s1" not in keys
    assert owner_signing_key("s1", "alice") == owner_signing_key("s1", "alice")
    assert owner_signing_key("s2", "alice") != owner_signing_key("s1", "alice")
    assert len(owner_signing_key("s1", "alice")) == 64


def test_the_keys_command_prints_an_owners_callback_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ONNX_WEB_CALLBACK_SECRET", "s1")
    assert main(["keys", "callback-key", "alice"]) == 0
    assert capsys.readouterr().out.strip() == owner_signing_key("s1", "alice")

    monkeypatch.delenv("ONNX_WEB_CALLBACK_SECRET")
    assert main(["keys", "callback-key", "alice"]) == 2
    assert "ONNX_WEB_CALLBACK_SECRET is not set" in capsys.readouterr().err
