"""Batch generation (`kind: generate`): vLLM over a prompt dataset with Ray Data's `ray.data.llm`.

Modules: prompts (read + vet input), engine (the ray.data.llm processor), chunks
(resumable output layout), storage (local / s3:// / gs:// via pyarrow.fs), job (runner).
"""
