"""The YAML loader, overrides and job-kind dispatch (no Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rayworks.config.base import config_hash, load_yaml_model, set_override
from rayworks.config.cluster import ClusterSpec, load_cluster_spec
from rayworks.config.jobs import load_job
from rayworks.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nhead:\n  num_cpus: [1,\n  memory_gb: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: malformed YAML"):
        load_yaml_model(ClusterSpec, p)


def test_validation_error_names_field_line_and_value(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("name: ok\nhead:\n  num_cpus: many\n  memory_gb: 2\nstorage:\n  uri: /x\n")
    with pytest.raises(ConfigError) as e:
        load_yaml_model(ClusterSpec, p)
    msg = str(e.value)
    assert "spec.yaml:3" in msg and "head.num_cpus" in msg and "'many'" in msg


def test_unknown_key_is_rejected(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("name: ok\nhead: {num_cpus: 2, memory_gb: 2}\nstorage: {uri: /x}\nheadd: 1\n")
    with pytest.raises(ConfigError, match="headd: unknown key"):
        load_yaml_model(ClusterSpec, p)


def test_overrides_parse_yaml_values():
    d = {"a": {"b": 1}}
    set_override(d, "a.b=3")
    set_override(d, "a.c.d=[1, 2]")
    set_override(d, "e=true")
    assert d == {"a": {"b": 3, "c": {"d": [1, 2]}}, "e": True}
    with pytest.raises(ConfigError, match="KEY.SUB=VALUE"):
        set_override(d, "nokey")


def test_local_spec_resolves_storage_relative_to_file():
    spec = load_cluster_spec(REPO / "cluster" / "local.yaml")
    assert spec.storage.uri == str(REPO / "artifacts")
    assert spec.auth.mode == "token" and spec.dashboard.host == "127.0.0.1"
    # Pitfall 3: more logical CPUs than cores so LLM replica + ingress + driver all schedule.
    assert spec.head.num_cpus >= 4


def test_config_hash_is_stable_and_sensitive():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_unknown_kind(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("kind: bake\nname: x\n")
    with pytest.raises(ConfigError, match="'bake' is not a job kind"):
        load_job(p)


def test_cli_exits_2_with_one_line(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("kind: [unclosed\n")
    proc = subprocess.run([str(Path(sys.executable).with_name("rayworks")), "validate", str(p)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "malformed YAML" in lines[0], proc.stderr


def test_secret_env_vars_come_from_the_shell_not_the_file(tmp_path, monkeypatch):
    from rayworks.config.jobs import JobBase
    from rayworks.client.submit import runtime_env

    spec = ClusterSpec.model_validate({"name": "t", "head": {"num_cpus": 2, "memory_gb": 2}, "storage": {"uri": "/x"},
                                       "runtime_env": {"secret_env_vars": ["RW_TEST_SECRET"]}})
    job = JobBase(kind="prep", name="x")
    with pytest.raises(ConfigError, match="RW_TEST_SECRET"):
        runtime_env(job, spec, tmp_path)
    monkeypatch.setenv("RW_TEST_SECRET", "s3cr3t")
    env = runtime_env(job, spec, tmp_path)
    # The value travels sealed (rayworks.secrets), never in plain text in the runtime env.
    from rayworks.secrets import SEALED_VAR

    assert SEALED_VAR in env["env_vars"] and "s3cr3t" not in repr(env)
    with pytest.raises(Exception, match="looks like a secret"):
        ClusterSpec.model_validate({"name": "t", "head": {"num_cpus": 2, "memory_gb": 2}, "storage": {"uri": "/x"},
                                    "runtime_env": {"env_vars": {"HF_TOKEN": "abc"}}})


# ---------------------------------------------------------------- the loader refuses surprises
def _load(tmp_path, text: str | bytes):
    p = tmp_path / "spec.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return load_yaml_model(ClusterSpec, p)


SPEC = "name: ok\nhead: {num_cpus: 2, memory_gb: 2}\nstorage: {uri: /x}\n"


def test_duplicate_key_names_the_key_and_both_lines(tmp_path):
    # A later `auth: {mode: disabled}` must not silently win over the first.
    with pytest.raises(ConfigError, match=r"spec\.yaml:5: duplicate key 'auth' \(first at line 4\)"):
        _load(tmp_path, SPEC + "auth: {mode: token}\nauth: {mode: disabled}\n")
    with pytest.raises(ConfigError, match=r":2: duplicate key 'num_cpus' \(first at line 2\)"):
        _load(tmp_path, "name: ok\nhead: {num_cpus: 2, num_cpus: 4, memory_gb: 2}\nstorage: {uri: /x}\n")
    # A key given explicitly beside a merge key (<<) overrides the merged one: that is what merges are for.
    spec = _load(tmp_path, "name: ok\nhead: {<<: {num_cpus: 2, memory_gb: 2}, num_cpus: 4}\nstorage: {uri: /x}\n")
    assert (spec.head.num_cpus, spec.head.memory_gb) == (4, 2)


def test_yaml_11_octal_and_base60_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"spec\.yaml:2: '010' is an octal .* reads as 8"):
        _load(tmp_path, "name: ok\nhead: {num_cpus: 010, memory_gb: 2}\nstorage: {uri: /x}\n")
    with pytest.raises(ConfigError, match="'1:30' is an octal or base-60"):
        _load(tmp_path, SPEC.replace("num_cpus: 2", "num_cpus: 1:30"))
    # Quoted, it is text; a plain 0, hex and underscores read as written.
    from rayworks.config.base import parse_yaml

    assert parse_yaml("a: '010'\nb: 0\nc: 0x1f\nd: 1_000\ne: 08\n", "t") == {
        "a": "010", "b": 0, "c": 31, "d": 1000, "e": "08"}


def test_yaml_11_booleans_are_refused(tmp_path):
    # `no` is False in YAML 1.1 (PyYAML), a string in YAML 1.2: refused instead of guessed.
    with pytest.raises(ConfigError, match=r"spec\.yaml:4: 'no' is a boolean only in YAML 1\.1 .* write true or false"):
        _load(tmp_path, SPEC + "tracking: {enabled: no}\n")
    from rayworks.config.base import parse_yaml

    for word in ("yes", "No", "on", "OFF"):
        with pytest.raises(ConfigError, match="boolean only in YAML 1.1"):
            parse_yaml(f"a: {word}\n", "t")
    assert parse_yaml("a: true\nb: False\nc: 'no'\nd: [TRUE, false]\n", "t") == {
        "a": True, "b": False, "c": "no", "d": [True, False]}


def test_non_finite_numbers_are_refused(tmp_path):
    for bad in (".inf", "-.Inf", ".nan", "'inf'", "1e999"):
        with pytest.raises(ConfigError, match="finite"):
            _load(tmp_path, SPEC.replace("num_cpus: 2", f"num_cpus: {bad}"))


def test_alias_bomb_is_refused_before_any_object_is_built(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")]
    with pytest.raises(ConfigError, match="expands to more than"):
        _load(tmp_path, SPEC + "\n".join(lines) + "\n")
    many = "".join(f"k{i}: *a\n" for i in range(200))
    with pytest.raises(ConfigError, match="more than 100 YAML alias references"):
        _load(tmp_path, "x: &a 1\n" + many)
    # A few aliases are fine.
    spec = _load(tmp_path, "name: ok\nhead: &h {num_cpus: 2, memory_gb: 2}\nstorage: {uri: /x}\n"
                           "worker_groups: []\n")
    assert spec.head.memory_gb == 2


def test_invalid_utf8_deep_nesting_and_control_characters(tmp_path):
    with pytest.raises(ConfigError, match=r"spec\.yaml:2: not valid UTF-8 \(byte 0xff"):
        _load(tmp_path, b"name: ok\nhead: \xff\n")
    with pytest.raises(ConfigError, match="nested deeper than 64"):
        _load(tmp_path, "name: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        _load(tmp_path, "name: ok\x00\n")


def test_set_with_malformed_yaml_and_empty_keys():
    with pytest.raises(ConfigError, match=r"--set 'a=\[1':1: malformed YAML"):
        set_override({}, "a=[1")
    with pytest.raises(ConfigError, match="empty key part"):
        set_override({}, "a..b=1")
    with pytest.raises(ConfigError, match="finite"):
        set_override({}, "a=.nan")


def test_kind_must_be_a_string(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("kind: []\nname: x\n")
    with pytest.raises(ConfigError, match="kind: expected a string"):
        load_job(p)


def test_cli_exit_2_one_line_for_every_bad_input(tmp_path):
    """In-process: the messages themselves never span lines (a YAML error's context has newlines)."""
    import contextlib
    import io

    from rayworks.client.cli import main

    cases = {"dups.yaml": b"kind: prep\nkind: train\n", "utf8.yaml": b"kind: prep\nname: \xc3\x28\n",
             "bomb.yaml": b"a: &a [1,1,1,1,1,1,1,1,1,1]\n" + b"".join(
                 f"{c}: &{c} [{','.join(['*' + p] * 10)}]\n".encode() for p, c in zip("abcde", "bcdef")),
             "ctl.yaml": b"kind: prep\x07\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        for argv in (["validate", str(tmp_path / name)], ["cluster", "validate", str(tmp_path / name)],
                     ["submit", str(tmp_path / name), "--dry-run"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main(argv)
            assert rc == 2 and len(err.getvalue().splitlines()) == 1, (argv, err.getvalue())


def test_submit_dry_run_prints_what_would_go_and_contacts_nothing(tmp_path, capsys):
    from rayworks.client.cli import main

    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    job = tmp_path / "prep.yaml"
    job.write_text(f"kind: prep\nname: dry\ncluster: {REPO / 'cluster' / 'local.yaml'}\n"
                   "inputs: [{path: a.jsonl, format: jsonl}]\nexecution: {num_workers: 2}\n")
    # An address where nothing listens: a dry run must not try it.
    assert main(["submit", str(job), "--dry-run", "--address", "http://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out
    assert "would submit prep job 'dry' to cluster 'local' at http://127.0.0.1:9" in out
    assert "needs 2 x (1 CPU) for prep workers" in out and f"path: {tmp_path / 'a.jsonl'}" in out
