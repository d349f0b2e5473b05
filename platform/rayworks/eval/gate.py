"""The promotion gate: does a candidate model's evaluation allow it to replace the served one?

Pure logic over an eval job's ``results.json`` (no Ray, no torch), so the pipeline, ``rayworks
serve update --gate`` and the eval job itself all reach the same verdict from the same numbers.
Rules (``GateRules``): the candidate's token-weighted loss on each perplexity source may exceed
the baseline's (the model now serving, scored by the same job on the same data) by at most
``max_val_loss_regression`` nats; each task in ``min_accuracy`` must score at least that much.
With no model serving yet, the loss rule has nothing to compare with and passes (said so).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rayworks.errors import RayworksError


class GateFailedError(RayworksError):
    """The candidate failed a promotion rule: it is not deployed and the served model stays."""

    exit_code = 3


@dataclass
class Check:
    """One rule applied to one number."""

    rule: str          # "max_val_loss_regression" or "min_accuracy"
    subject: str       # perplexity source or task name
    candidate: float | None
    baseline: float | None  # the served model's score (loss rule) or the threshold (accuracy rule)
    limit: float | None     # the largest (loss) or smallest (accuracy) acceptable candidate value
    passed: bool
    note: str = ""


@dataclass
class Verdict:
    """Every check, and whether all passed."""

    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}

    def table(self) -> str:
        """The scores side by side, one rule per line (what the pipeline prints)."""
        rows = [("rule", "on", "candidate", "serving/threshold", "limit", "result")]
        for c in self.checks:
            rows.append((c.rule, c.subject, _fmt(c.candidate), _fmt(c.baseline), _fmt(c.limit),
                         ("pass" if c.passed else "FAIL") + (f" ({c.note})" if c.note else "")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def task_score(task_result: dict) -> tuple[str, float] | None:
    """(metric, value) of a task result: acc, else exact_match, else acc_norm (lm-eval's ``name,filter`` keys)."""
    for name in ("acc", "exact_match", "acc_norm"):
        for key, val in task_result.items():
            if key.split(",")[0] == name and isinstance(val, (int, float)) and not isinstance(val, bool):
                return name, float(val)
    return None


def evaluate(rules, results: dict) -> Verdict:
    """Applies ``rules`` (a GateRules) to an eval job's results dict.

    ``results["perplexity"]`` maps source -> {"loss", ...} for the candidate and
    ``results["baseline"]["perplexity"]`` the same for the model now serving (absent: none serving);
    ``results["harness"]["results"]`` is lm-eval's per-task result dict.
    """
    v = Verdict()
    if rules.max_val_loss_regression is not None:
        cand = results.get("perplexity") or {}
        base = ((results.get("baseline") or {}).get("perplexity")) or {}
        other = set((results.get("baseline") or {}).get("incomparable") or ())
        if not cand:
            v.checks.append(Check("max_val_loss_regression", "-", None, None, None, False,
                                  "the results have no perplexity scores"))
        for source, score in sorted(cand.items()):
            loss = score.get("loss")
            b = (base.get(source) or {}).get("loss")
            if source in other:  # fail closed: a loss on other data says nothing about regression
                v.checks.append(Check("max_val_loss_regression", source, loss, None, None, False,
                                      "the serving model was scored on other data; give compare_to its export"))
                continue
            if b is None:
                v.checks.append(Check("max_val_loss_regression", source, loss, None, None, loss is not None,
                                      "no model serving to compare with"))
                continue
            limit = b + rules.max_val_loss_regression
            ok = loss is not None and loss == loss and loss <= limit  # NaN never passes
            v.checks.append(Check("max_val_loss_regression", source, loss, b, limit, ok))
    tasks = ((results.get("harness") or {}).get("results")) or {}
    for task, threshold in sorted(rules.min_accuracy.items()):
        got = task_score(tasks.get(task) or {})
        if got is None:
            v.checks.append(Check("min_accuracy", task, None, threshold, threshold, False,
                                  "task not in the results or has no acc/exact_match"))
            continue
        metric, value = got
        v.checks.append(Check("min_accuracy", task, value, threshold, threshold, value >= threshold, metric))
    return v


def enforce(rules, results: dict, what: str) -> Verdict:
    """Raises GateFailedError (message with the side-by-side table) unless every rule passes."""
    verdict = evaluate(rules, results)
    if not verdict.passed:
        failed = [f"{c.rule} on {c.subject}" for c in verdict.checks if not c.passed]
        raise GateFailedError(f"{what} failed the promotion gate ({'; '.join(failed)}); it is not deployed and the "
                              f"model now serving keeps serving:\n{verdict.table()}")
    return verdict


def with_recorded_baseline(results: dict, recorded: dict) -> dict:
    """``results`` with the serving model's recorded scores as its baseline (when its weights are gone).

    ``recorded`` is what the pipeline kept when that model passed its own gate: its perplexity per
    source, each with the ``data_sha256`` of what it was scored on. Only scores on identical data
    compare; other sources are listed as ``incomparable`` and fail the loss rule.
    """
    rec = recorded.get("perplexity") or {}
    base, other = {}, []
    for source, score in (results.get("perplexity") or {}).items():
        r = rec.get(source)
        if r and r.get("data_sha256") and r.get("data_sha256") == score.get("data_sha256"):
            base[source] = r
        else:
            other.append(source)
    return {**results, "baseline": {"model": recorded.get("model"), "model_sha256": recorded.get("model_sha256"),
                                    "perplexity": base, "incomparable": sorted(other), "recorded": True}}
