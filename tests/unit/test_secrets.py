"""Sealed secret env vars: what a job's runtime env carries instead of the values."""

from __future__ import annotations

import json
import os

import pytest

from rayworks.errors import ConfigError
from rayworks.secrets import HOOK, SEALED_VAR, seal, sealed_runtime_env, unseal, unseal_env

TOKEN = "a" * 64
CANARY = "sk-canary-5e1f0c2b7d"


def test_round_trip_and_no_plain_text():
    sealed = seal({"HF_TOKEN": CANARY, "OTHER": "x"}, TOKEN)
    assert CANARY not in sealed
    assert unseal(sealed, TOKEN) == {"HF_TOKEN": CANARY, "OTHER": "x"}
    # A fresh nonce per value: sealing twice never gives the same text.
    assert seal({"HF_TOKEN": CANARY}, TOKEN) != seal({"HF_TOKEN": CANARY}, TOKEN)


def test_another_clusters_token_cannot_open():
    sealed = seal({"HF_TOKEN": CANARY}, TOKEN)
    with pytest.raises(ValueError, match="another cluster's auth token"):
        unseal(sealed, "b" * 64)


def test_a_value_moved_to_another_name_does_not_open():
    doc = json.loads(seal({"A": CANARY, "B": "public"}, TOKEN))
    doc["values"]["B"], doc["values"]["A"] = doc["values"]["A"], doc["values"]["B"]
    with pytest.raises(ValueError, match="does not open"):
        unseal(json.dumps(doc), TOKEN)


def test_runtime_env_entries(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    env = sealed_runtime_env(["HF_TOKEN"], {"HF_TOKEN": CANARY})
    assert env["worker_process_setup_hook"] == HOOK
    assert list(env["env_vars"]) == [SEALED_VAR]
    assert CANARY not in json.dumps(env)
    assert sealed_runtime_env([], {}) == {}


def test_missing_secret_and_missing_token_are_config_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match=r"\['HF_TOKEN'\] but they are not set"):
        sealed_runtime_env(["HF_TOKEN"], {})
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="never sent in plain text"):
        sealed_runtime_env(["HF_TOKEN"], {"HF_TOKEN": CANARY})
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    (tmp_path / "tok").write_text(TOKEN)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    with pytest.raises(ConfigError, match="auth.mode: token"):
        sealed_runtime_env(["HF_TOKEN"], {"HF_TOKEN": CANARY})


def test_unseal_env_opens_into_this_process_with_the_token_file(monkeypatch, tmp_path):
    tok = tmp_path / "auth_token"
    tok.write_text(TOKEN + "\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tok))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    name = "RW_UNSEAL_TEST_SECRET"
    assert name not in os.environ
    monkeypatch.setenv(SEALED_VAR, seal({name: CANARY}, TOKEN))
    try:
        unseal_env()
        assert os.environ[name] == CANARY
        assert SEALED_VAR not in os.environ  # opened once; nothing sealed lingers to be re-read
        unseal_env()  # nothing to do: no error
    finally:
        os.environ.pop(name, None)  # set by unseal_env, not by monkeypatch: undo it here
