"""The platform's own Prometheus metrics, exported through `ray.util.metrics`.

Ray prefixes every name with ``ray_`` on export (STACK.md pitfall 6): the counter
``rayworks_prep_documents_total`` is scraped as ``ray_rayworks_prep_documents_total``;
dashboards query the prefixed names. Every metric carries ``job`` (the kind) and
``run`` (the job's name) tags.

Names follow Prometheus conventions: units in the name, ``_total`` for counters.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_cache: dict[str, object] = {}

BASE_TAGS = ("job", "run")


def _get(kind: str, name: str, description: str, tag_keys: tuple[str, ...], **kw):
    with _lock:
        m = _cache.get(name)
        if m is None:
            from ray.util import metrics as rm

            cls = {"counter": rm.Counter, "gauge": rm.Gauge, "histogram": rm.Histogram}[kind]
            m = cls(name, description=description, tag_keys=BASE_TAGS + tuple(tag_keys), **kw)
            _cache[name] = m
        return m


def counter(name: str, description: str, tag_keys: tuple[str, ...] = ()):
    """A Counter (name must end in ``_total``)."""
    assert name.endswith("_total"), name
    return _get("counter", name, description, tag_keys)


def gauge(name: str, description: str, tag_keys: tuple[str, ...] = ()):
    return _get("gauge", name, description, tag_keys)


def histogram(name: str, description: str, boundaries: list[float], tag_keys: tuple[str, ...] = ()):
    return _get("histogram", name, description, tag_keys, boundaries=boundaries)


def tags(job: str, run: str, **extra: str) -> dict[str, str]:
    """The tag dict for a metric update."""
    return {"job": job, "run": run, **{k: str(v) for k, v in extra.items()}}
