"""Batch generation (`kind: generate`): vLLM engines over a prompt dataset on Ray Data.

Modules: prompts (read + vet input), engine (the engine actors: a vllm.LLM per Ray Data
actor, or the ray.data.llm processor), chunks (resumable output layout), preflight
(model and input checks), job (runner).
"""
