"""Fuzzing every config loader and the CLI commands that take a file: exit 0 or 2, one line, no traceback.

Inputs come from hypothesis: random structures over the real config keys, mutations of the
shipped configs, raw YAML metacharacters, invalid UTF-8, deep nesting and alias bombs. The
loader bounds time and memory by construction (size, depth, alias count and expanded size,
see rayworks.config.base); the alias bomb is also run in a subprocess under RLIMIT_AS. No test
here asserts on wall time; subprocess timeouts only guard against a hang.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import resource
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayworks.client import cli
from rayworks.config.cluster import ClusterSpec, load_cluster_spec
from rayworks.config.jobs import KINDS, job_class, load_job
from rayworks.config.pipeline import load_pipeline
from rayworks.errors import ConfigError
from rayworks.client.preflight import check_config

REPO = Path(__file__).resolve().parents[2]
RAYWORKS = str(Path(sys.executable).with_name("rayworks"))
LOCAL_SPEC = str(REPO / "cluster" / "local.yaml")
# A fixed, derandomized sample keeps CI deterministic; RAYWORKS_FUZZ_EXAMPLES=2000 explores (random seeds).
DEFAULT_EXAMPLES = 40  # per test: ~10 s for the module on an idle 2-core machine
EXAMPLES = int(os.environ.get("RAYWORKS_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES == DEFAULT_EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _schema_keys() -> list[str]:
    """Every property name in the JSON schemas, so random documents hit real fields."""
    keys: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            keys.update(k for k in (node.get("properties") or {}) if isinstance(k, str))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for model in [ClusterSpec, *(job_class(k) for k in KINDS)]:
        walk(model.model_json_schema())
    return sorted(keys)


KEYS = _schema_keys()
# YAML and shell metacharacters; no '/' or '~', so no generated path leaves the test's folder
# (a prep input of "/" would make the preflight walk the whole disk).
META = "[]{}:,&*!|>'\"%@`#-? \t\n\\$;<=()"
TEXT = st.text(alphabet=META + string.ascii_letters[:12] + "0189._", max_size=24)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    TEXT, st.sampled_from(["auto", "cpu", "gpu", "local", "aws", "gcp", "kubernetes", "token", "disabled",
                           "127.0.0.1", "0.0.0.0", "x", "tiny", "jsonl", "010", "1:30", "1e999", "inf", "nan"]),
    st.sampled_from(list(KINDS)))
KEY = st.one_of(st.sampled_from(KEYS), TEXT)
VALUES = st.recursive(SCALARS, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(KEY, ch, max_size=5),
                      max_leaves=16)


def run_cli(argv: list[str]) -> tuple[int, str]:
    """`rayworks ARGV` in-process; asserts the exit contract for bad input and returns (rc, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code
    text = err.getvalue()
    assert rc in (0, 2), f"rayworks {argv[:3]} exited {rc}: {text[-2000:]}"
    assert "Traceback" not in text, text
    if rc == 2:
        lines = text.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), text
    return rc, text


def check_loader(fn, *args) -> None:
    """A loader either returns or raises ConfigError; anything else is a bug."""
    try:
        fn(*args)
    except ConfigError as exc:
        assert str(exc).strip(), "empty error message"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "corpus").mkdir()
    (d / "corpus" / "a.jsonl").write_text('{"text": "hello"}\n')
    return d


def base_docs(work: Path) -> dict[str, dict]:
    """The shipped configs, pointed at this test's folder so their preflight can pass."""
    docs = {}
    for name in ("prep", "train", "serve", "generate"):
        d = yaml.safe_load((REPO / "jobs" / "configs" / f"{name}.yaml").read_text())
        d["cluster"] = LOCAL_SPEC
        docs[name] = d
    docs["prep"]["inputs"] = [{"path": str(work / "corpus" / "*.jsonl"), "format": "jsonl"}]
    for name in ("local", "aws", "gcp", "kubernetes"):
        docs[f"cluster:{name}"] = yaml.safe_load((REPO / "cluster" / f"{name}.yaml").read_text())
    return docs


def paths_of(node, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths_of(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths_of(v, prefix + (i,))
    return out


def mutate(doc: dict, path: tuple, op: str, value) -> dict:
    doc = copy.deepcopy(doc)
    if not path:
        return doc
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if op == "delete":
        del parent[path[-1]]
    elif op == "add" and isinstance(parent[path[-1]], dict):
        parent[path[-1]][f"extra_{len(str(value))}"] = value
    else:
        parent[path[-1]] = value
    return doc


def exercise_file(path: Path, what: str) -> None:
    """Every loader and CLI command that could take this file."""
    if what.startswith("cluster"):
        check_loader(load_cluster_spec, path)
        run_cli(["cluster", "validate", str(path)])
        for target in ("ray-up", "kuberay"):
            run_cli(["cluster", "render", str(path), "--target", target])
        return
    check_loader(load_job, path)
    run_cli(["validate", str(path)])
    run_cli(["submit", str(path), "--dry-run"])
    if what == "serve":
        for target in ("serve", "kuberay"):
            run_cli(["serve", "render", str(path), "--target", target])


@SETTINGS
@given(data=st.data())
def test_mutated_shipped_configs(work, data):
    """One change (a wrong type, a metacharacter, a deletion, an extra key) to a real config."""
    docs = base_docs(work)
    what = data.draw(st.sampled_from(sorted(docs)))
    doc = docs[what]
    path = data.draw(st.sampled_from(paths_of(doc)))
    op = data.draw(st.sampled_from(["replace", "delete", "add"]))
    doc = mutate(doc, path, op, data.draw(VALUES))
    f = work / "mutated.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    exercise_file(f, what)


@SETTINGS
@given(what=st.sampled_from(["cluster", *KINDS]), body=st.dictionaries(KEY, VALUES, max_size=8),
       kind=st.one_of(st.sampled_from(list(KINDS)), VALUES))
def test_random_documents(work, what, body, kind):
    doc = {**body, "kind": kind} if what != "cluster" else body
    f = work / "random.yaml"
    f.write_text(yaml.safe_dump(doc, allow_unicode=True))
    exercise_file(f, what)
    if what == "pipeline":
        check_loader(lambda p: check_config(load_pipeline(p), load_cluster_spec(LOCAL_SPEC)), f)


@SETTINGS
@given(text=st.text(alphabet=META + "ab01kindname.", max_size=160), binary=st.binary(max_size=40),
       what=st.sampled_from(["cluster", "prep", "pipeline"]))
def test_raw_text_and_bytes(work, text, binary, what):
    """Arbitrary (mostly malformed) YAML text, then the same with raw bytes that may not be UTF-8."""
    f = work / "raw.yaml"
    for content in (text.encode(), f"kind: {what}\nname: x\n".encode() + binary, binary + text.encode()):
        f.write_bytes(content)
        exercise_file(f, what)


@SETTINGS
@given(depth=st.integers(1, 400), flow=st.booleans(), width=st.integers(2, 12), levels=st.integers(1, 8))
def test_nesting_and_aliases(work, depth, flow, width, levels):
    f = work / "shape.yaml"
    if flow:
        f.write_text("kind: prep\nname: x\ninputs: " + "[" * depth + "1" + "]" * depth + "\n")
    else:
        f.write_text("kind: prep\nname: x\nclean:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(depth))
                     + "  " * (depth + 1) + "v: 1\n")
    exercise_file(f, "prep")
    lines = ["kind: prep", "name: x", "a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    f.write_text("\n".join(lines) + f"\ninputs: *a{levels - 1}\n")
    exercise_file(f, "prep")


@SETTINGS
@given(override=st.text(alphabet=META + "abkey.=01", max_size=40))
def test_set_overrides(work, override):
    f = work / "prep.yaml"
    f.write_text(yaml.safe_dump(base_docs(work)["prep"]))
    run_cli(["validate", str(f), f"--set={override}"])
    run_cli(["submit", str(f), "--dry-run", "--set", override])  # argparse usage errors: one line too


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (200 * 2**20, 200 * 2**20))


BOMB = "\n".join(["kind: prep", "name: x", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
                 + [f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")]) + "\n"


@pytest.mark.parametrize("name,content,args", [
    ("bomb", BOMB.encode(), ["validate"]),
    ("bomb", BOMB.encode(), ["cluster", "validate"]),
    ("deep", b"kind: prep\nname: x\ninputs: " + b"[" * 5000 + b"]" * 5000 + b"\n", ["validate"]),
    ("utf8", b"kind: prep\nname: \xff\xfe\n", ["submit", "--dry-run"]),
    ("dups", b"name: a\nhead: {num_cpus: 2, memory_gb: 2}\nauth: {mode: token}\nauth: {mode: disabled}\n",
     ["cluster", "render", "--target", "ray-up"]),
    ("kindlist", b"kind: []\nname: x\n", ["validate"]),
    ("pipedups", b"kind: pipeline\nname: p\nprep: a.yaml\nprep: b.yaml\ntrain: c.yaml\n", ["run"]),
    ("setbad", b"kind: prep\nname: x\n", ["validate", "--set", "a=[unclosed"]),
])
def test_binary_exits_2_with_one_line_within_200mb(tmp_path, name, content, args):
    """The real `rayworks` binary, memory-capped: exit 2, one line, no traceback (timeout: hang guard only)."""
    f = tmp_path / f"{name}.yaml"
    f.write_bytes(content)
    argv = [RAYWORKS, *args[:2], str(f), *args[2:]] if args[0] == "cluster" else [RAYWORKS, args[0], str(f), *args[1:]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, preexec_fn=_limit_memory)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
