"""Builds the shipped eval task data: ``facts.jsonl``, synthetic facts this script makes up.

    python jobs/configs/eval_tasks/build_tasks.py            # rewrites facts.jsonl beside it
    python jobs/configs/eval_tasks/build_tasks.py --check    # exit 1 if facts.jsonl differs

Every line is one made-up fact, "The <name> is <colour>.", about a nonsense name built from
syllables by a seeded random generator (so no text from anywhere else, and nothing a
pretrained model could know): 48 facts, each of 8 colours the answer to exactly 6, so a
model that always prefers one colour scores exactly chance (1/8) on the multiple-choice
task. The three task YAMLs beside it read this one file:

* ``rw_facts_mc``       multiple_choice by log-likelihood: which colour follows "The <name> is";
* ``rw_facts_gen``      generate_until (greedy): the colour the model writes, exact match;
* ``rw_facts_rolling``  loglikelihood_rolling: word/byte perplexity of each whole fact.

A model trained on these sentences (the eval integration test does) scores ~100%; a random
one scores chance. Point ``harness.include_path`` at your own folder of lm-eval task YAMLs
to evaluate anything else.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

COLOURS = ("red", "green", "blue", "yellow", "black", "white", "brown", "purple")
SYLLABLES = ("ka", "lo", "mi", "ru", "ten", "sa", "vo", "qui", "bel", "dor", "fi", "nu", "pra", "zel", "gom", "tir")
NUM_PER_COLOUR = 6
SEED = 19


def facts() -> list[dict]:
    rng = random.Random(SEED)
    names: list[str] = []
    while len(names) < len(COLOURS) * NUM_PER_COLOUR:
        n = "".join(rng.choice(SYLLABLES) for _ in range(3))
        if n not in names:
            names.append(n)
    answers = [c for c in COLOURS for _ in range(NUM_PER_COLOUR)]
    rng.shuffle(answers)
    return [{"id": i, "name": n, "query": f"The {n} is", "choices": list(COLOURS), "gold": COLOURS.index(a),
             "answer": a, "text": f"The {n} is {a}."} for i, (n, a) in enumerate(zip(names, answers))]


def render() -> str:
    return "".join(json.dumps(f, sort_keys=True) + "\n" for f in facts())


if __name__ == "__main__":
    out = Path(__file__).with_name("facts.jsonl")
    if "--check" in sys.argv:
        sys.exit(0 if out.exists() and out.read_text() == render() else 1)
    out.write_text(render())
    print(f"wrote {out} ({len(facts())} facts)")
