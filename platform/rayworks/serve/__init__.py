"""Serving: Ray Serve LLM (vLLM replicas) behind an authenticated OpenAI-compatible API.

Modules: ``app`` (the Serve app builder, the ``import_path`` of every route), ``gate``
(API-key auth and request validation), ``render`` (job -> Serve config / RayService
args), ``job`` (the Ray job runner), ``rollout`` (`rayworks serve update`),
``manifest`` and ``cli``.
"""
