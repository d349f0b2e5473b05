"""What every shipped Grafana dashboard shows: rows of panels, each a PromQL query.

Edit this file, then run ``python dashboards/generate.py`` (the drift test compares).

Names: Ray exports ``ray.util.metrics`` with a ``ray_`` prefix, so the rayworks
counter ``rayworks_prep_documents_total`` is queried as
``ray_rayworks_prep_documents_total``. Ray Serve (``ray_serve_*``), vLLM inside
Ray Serve (``ray_vllm_*``), Ray Data (``ray_data_*``), Ray Train (``ray_train_*``)
and Ray core (``ray_node_*``, ``ray_tasks``...) names are the ones a running
cluster exports (tests/integration/test_monitoring.py scrapes them).

Grafana variables: ``$run`` (multi-select, "All" = ``.*``) filters rayworks jobs by
run name; ``$__rate_interval`` is Grafana's own rate window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RATE = "$__rate_interval"
GPU_ONLY = "Shows data on clusters with GPUs only."
# The e2e pipeline neither embeds nor serves an index: these panels are checked against a real
# Prometheus by tests/integration/test_retrieval.py instead (tests/e2e/test_dashboards.py skips them).
RETRIEVAL_ONLY = "Shows data where retrieval runs: embed jobs, or a served app with an index attached."


@dataclass(frozen=True)
class Panel:
    """One Grafana panel: a title, a unit (Grafana unit id), a description and its queries."""

    title: str
    unit: str
    description: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend format)
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8
    min: float | None = 0


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    query: str  # Grafana's Prometheus variable query, e.g. label_values(metric, label)
    description: str


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...] = field(default_factory=tuple)


def rate(metric: str, by: str, sel: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{RATE}]))"


def quantile(q: float, metric_bucket: str, by: str, sel: str = "") -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric_bucket}{{{sel}}}[{RATE}])))"


def run_var(metric: str) -> Variable:
    return Variable("run", "Run", f"label_values({metric}, run)", "The rayworks job's `name` (all runs by default).")


# ---------------------------------------------------------------- data prep
PREP_SEL = 'job="prep", run=~"$run"'

# Curation drop reasons (rayworks.data.quality / langid / decontam) -> what the panel says.
# tests/unit/test_quality.py checks this list against the reasons the code can emit.
CURATION_REASONS: tuple[tuple[str, str], ...] = (
    ("quality.c4_curly_braces", "C4: more curly braces than quality.c4.max_curly_braces (code, templates)."),
    ("quality.c4_too_few_lines", "C4: fewer than quality.c4.min_lines lines left after the C4 line rules."),
    ("quality.word_count", "Gopher: word count outside quality.gopher.min_words..max_words."),
    ("quality.mean_word_length", "Gopher: mean word length outside min/max_mean_word_length."),
    ("quality.symbol_ratio", "Gopher: too many '#' and ellipses per word (tag lists, truncated snippets)."),
    ("quality.ellipsis_lines", "Gopher: too many lines ending in an ellipsis (truncated listings)."),
    ("quality.bullet_lines", "Gopher: (almost) every line is a bullet (menus, link lists)."),
    ("quality.alpha_words", "Gopher: too few words with a letter (tables of numbers, garbage)."),
    ("quality.stop_words", "Gopher: too few stop words (not running prose in the expected language)."),
    ("quality.duplicate_lines", "Gopher: too many repeated lines, by count or by characters (boilerplate)."),
    ("quality.duplicate_paragraphs", "Gopher: too many repeated paragraphs, by count or by characters."),
    ("quality.top_ngram", "Gopher: one word n-gram covers too much of the text (spam, keyword stuffing)."),
    ("quality.duplicate_ngram", "Gopher: too much of the text sits in repeated word n-grams."),
    ("lang.other", "Language ID: the most likely language is not in language.keep."),
    ("lang.low_confidence", "Language ID: a kept language, but below language.min_confidence."),
    ("decontam.ngram", "Decontamination: shares a word n-gram with the evaluation set (decontam.path)."),
)


def _reason_panel(reason: str, what: str) -> Panel:
    return Panel(f"Dropped: {reason}", "short",
                 f"{what} Documents dropped for this reason in each run (a dry run drops none: see the "
                 "inspection file).",
                 ((f'sum by (run) (ray_rayworks_prep_documents_dropped_total{{{PREP_SEL}, reason="{reason}"}})',
                   "{{run}}"),), kind="stat", width=6, height=5)


CURATION_ROW = Row("Data quality (curation stages)", (
    Panel("Lines removed by the C4 rules, by rule", "short",
          "Lines the C4 line rules removed from documents they kept or dropped, by rule (javascript, "
          "lorem_ipsum, policy, no_terminal_punct, short_line). Lines, not documents: a document only drops "
          "when too few lines remain.",
          (("sum by (run, rule) (ray_rayworks_prep_lines_removed_total{" + PREP_SEL + "})", "{{run}} {{rule}}"),),
          kind="stat"),
    Panel("PII redacted, by kind", "short",
          "E-mail addresses, IPv4/IPv6 addresses and phone numbers replaced by placeholders before "
          "tokenization, by kind (matches, not documents).",
          (("sum by (run, kind) (ray_rayworks_prep_pii_redacted_total{" + PREP_SEL + "})", "{{run}} {{kind}}"),),
          kind="stat"),
    *(_reason_panel(r, w) for r, w in CURATION_REASONS),
    _reason_panel("near_duplicate", "MinHash-LSH: a near-duplicate of an earlier document (prep near_dup: "
                  "Jaccard of the shingle sets >= near_dup.threshold); each cluster keeps its first document."),
))
PREP = Dashboard(
    uid="rayworks-prep", title="rayworks / Data prep",
    description="Raw text to packed token shards: throughput, drops and Ray Data's own view of the pipeline.",
    tags=("prep",), variables=(run_var("ray_rayworks_prep_documents_total"),),
    rows=(
        Row("Throughput", (
            Panel("Documents per second", "ops",
                  "Documents processed per second by each stage of the prep job (clean: read from the inputs; "
                  "pack: tokenized). A stage at zero while the job runs is stalled or waiting on another.",
                  ((rate("ray_rayworks_prep_documents_total", "run, stage", PREP_SEL), "{{run}} {{stage}}"),)),
            Panel("Tokens per second", "short",
                  "Tokens written to the packed shards per second (end-of-text tokens included), by split. "
                  "This is the rate that decides how long tokenizing a corpus takes.",
                  ((rate("ray_rayworks_prep_tokens_total", "run, split", PREP_SEL), "{{run}} {{split}}"),)),
            Panel("Input read rate", "Bps",
                  "Bytes of raw input text read per second. Compare with storage bandwidth to see whether "
                  "reading is the bottleneck.",
                  ((rate("ray_rayworks_prep_bytes_read_total", "run", PREP_SEL), "{{run}}"),)),
            Panel("Stage progress", "percentunit",
                  "Share of each stage's work units finished (0-100%). A rerun skips finished units, so it "
                  "can start above zero.",
                  (("max by (run, stage) (ray_rayworks_prep_progress_ratio{" + PREP_SEL + "})", "{{run}} {{stage}}"),),
                  min=None),
        )),
        Row("Output and drops", (
            Panel("Documents dropped per second, by reason", "ops",
                  "Documents removed by cleaning (too short, too long, bad characters, ...) or deduplication, "
                  "per second and by reason. A sudden jump usually means an input changed format.",
                  ((rate("ray_rayworks_prep_documents_dropped_total", "run, reason", PREP_SEL), "{{run}} {{reason}}"),)),
            Panel("Documents dropped in the run, by reason", "short",
                  "Total documents dropped so far in each run, by reason.",
                  (("sum by (run, reason) (ray_rayworks_prep_documents_dropped_total{" + PREP_SEL + "})",
                    "{{run}} {{reason}}"),), kind="stat"),
            Panel("Tokens written in the run", "short",
                  "Total tokens written to the packed shards in each run, by split (train / validation).",
                  (("sum by (run, split) (ray_rayworks_prep_tokens_total{" + PREP_SEL + "})", "{{run}} {{split}}"),),
                  kind="stat"),
            Panel("Packed sequences written in the run", "short",
                  "Fixed-length training rows written in each run, by split.",
                  (("sum by (run, split) (ray_rayworks_prep_sequences_total{" + PREP_SEL + "})",
                    "{{run}} {{split}}"),), kind="stat"),
        )),
        CURATION_ROW,
        Row("Embeddings (rayworks embed jobs)", (
            Panel("Chunks embedded per second", "ops",
                  "Document chunks the embed job's vLLM pooling engines turned into vectors per second, by "
                  "embed job. A rerun that resumes embeds only the parts not committed yet. " + RETRIEVAL_ONLY,
                  ((rate("ray_rayworks_embed_chunks_total", "run", 'job="embed"'), "{{run}}"),)),
            Panel("Embedding parts committed in the run", "short",
                  "Parquet parts of vectors written and committed (the unit a crashed embed job resumes "
                  "from), by embed job. " + RETRIEVAL_ONLY,
                  (('sum by (run) (ray_rayworks_embed_parts_committed_total{job="embed"})', "{{run}}"),),
                  kind="stat"),
        )),
        Row("Ray Data (all datasets on the cluster)", (
            Panel("Rows output per second, by operator", "short",
                  "Rows each Ray Data operator hands downstream per second. The slowest operator sets the "
                  "pace of the whole pipeline.",
                  ((rate("ray_data_output_rows", "dataset, operator"), "{{operator}}"),)),
            Panel("Running tasks, by operator", "short",
                  "Ray Data tasks running now per operator. Few running tasks with many queued blocks means "
                  "the operator is starved of CPUs.",
                  (("sum by (dataset, operator) (ray_data_num_tasks_running)", "{{operator}}"),)),
            Panel("Object store memory used by Ray Data", "bytes",
                  "Bytes of blocks Ray Data holds in the object store, by operator. Near the object store's "
                  "size, Ray Data applies backpressure and spills to disk.",
                  (("sum by (dataset, operator) (ray_data_obj_store_mem_used)", "{{operator}}"),)),
            Panel("CPU cores used by Ray Data", "short",
                  "Logical CPUs Ray Data's tasks and actors hold, by operator, against the budget it may use.",
                  (("sum by (dataset, operator) (ray_data_cpu_usage_cores)", "{{operator}}"),)),
        )),
    ),
)

# ---------------------------------------------------------------- training
TRAIN_SEL = 'job="train", run=~"$run"'
EVAL_SEL = 'job="eval", run=~"$eval_run"'
EVAL_RUN_VAR = Variable("eval_run", "Eval run", "label_values(ray_rayworks_eval_gate_passed, run)",
                        "The eval job's `name` (all eval runs by default).")


def train_gauge(metric: str, agg: str = "max") -> tuple[tuple[str, str], ...]:
    return ((f"{agg} by (run) (ray_rayworks_train_{metric}{{{TRAIN_SEL}}})", "{{run}}"),)


TRAIN = Dashboard(
    uid="rayworks-train", title="rayworks / Training",
    description="Ray Train + DeepSpeed runs: loss, learning rate, throughput, efficiency and memory; the eval "
                "jobs' scores of the exports.",
    tags=("train",), variables=(run_var("ray_rayworks_train_loss"), EVAL_RUN_VAR),
    rows=(
        Row("Progress", (
            Panel("Training loss", "none",
                  "Mean cross-entropy loss over the last logging window, across all workers. It should "
                  "fall; flat from the start often means the learning rate is too low, spikes that it is "
                  "too high.", train_gauge("loss"), min=None),
            Panel("Validation loss", "none",
                  "Loss on the held-out split at the last evaluation. Rising while training loss falls "
                  "means over-fitting.", train_gauge("val_loss"), min=None),
            Panel("Learning rate", "none",
                  "The optimizer's learning rate at the last step (after warm-up and decay).",
                  train_gauge("learning_rate")),
            Panel("Gradient norm", "none",
                  "Global gradient norm at the last step (before clipping). Sudden spikes precede loss "
                  "spikes and divergence.", train_gauge("grad_norm")),
            Panel("Optimizer step", "short",
                  "The last optimizer step completed. A line that stops rising while the job runs means "
                  "training is stuck (input data, a collective, a checkpoint).", train_gauge("step")),
            Panel("Checkpoints saved", "short",
                  "Checkpoints saved and reported to Ray Train in each run (a restart resumes from the "
                  "newest).",
                  (("sum by (run) (ray_rayworks_train_checkpoints_total{" + TRAIN_SEL + "})", "{{run}}"),),
                  kind="stat"),
        )),
        Row("Throughput and efficiency", (
            Panel("Training tokens per second", "short",
                  "Tokens trained per second across all workers, measured by the job over its last logging "
                  "window.", train_gauge("tokens_per_second", "sum")),
            Panel("Step time (p50, p90)", "s",
                  "Wall-clock seconds per optimizer step. A wide gap between p50 and p90 means some steps "
                  "wait (data loading, checkpoints, a slow worker).",
                  ((f"histogram_quantile(0.5, sum by (le, run) (rate(ray_rayworks_train_step_duration_seconds_bucket"
                    f"{{{TRAIN_SEL}}}[{RATE}])))", "p50 {{run}}"),
                   (f"histogram_quantile(0.9, sum by (le, run) (rate(ray_rayworks_train_step_duration_seconds_bucket"
                    f"{{{TRAIN_SEL}}}[{RATE}])))", "p90 {{run}}"))),
            Panel("Model FLOP/s", "flops",
                  "Model FLOPs per second achieved (6 x parameters + attention, per token, times tokens per "
                  "second). Compare runs and hardware with it.", train_gauge("model_flops_per_second", "sum")),
            Panel("Model FLOPs utilization (MFU)", "percentunit",
                  "Achieved FLOP/s over the devices' peak. Known for common GPUs; on CPUs set "
                  "scaling.peak_flops_per_device to get it. Well-tuned LLM training reaches 30-50% on GPUs.",
                  train_gauge("mfu_ratio")),
        )),
        Row("Memory and Ray Train", (
            Panel("Training worker memory (RSS)", "bytes",
                  "Resident memory of each Ray Train worker process, by node. On CPUs this is where the "
                  "model, optimizer state and activations live; near the node's memory, lower the "
                  "micro-batch or raise the ZeRO stage.",
                  (('sum by (ip, Component) (ray_component_rss_bytes{Component=~".*RayTrainWorker.*"})',
                    "{{ip}} {{Component}}"),)),
            Panel("GPU memory used by training", "decmbytes",
                  "GPU memory in use on each GPU of the cluster (training workers hold one GPU each). "
                  + GPU_ONLY,
                  (("sum by (ip, GpuIndex) (ray_node_gram_used)", "{{ip}} gpu {{GpuIndex}}"),)),
            Panel("Ray Train controller state", "short",
                  "Ray Train runs in each controller state (initializing, scheduling, running, "
                  "restarting, finished, errored).",
                  (("sum by (ray_train_run_name, ray_train_controller_state) (ray_train_controller_state)",
                    "{{ray_train_run_name}} {{ray_train_controller_state}}"),)),
            Panel("Worker group start time", "s",
                  "Seconds Ray Train spent starting the worker group (placement, process start, "
                  "torch.distributed set-up). Restarts add to it.",
                  (("max by (ray_train_run_name) (ray_train_worker_group_start_total_time_s)",
                    "{{ray_train_run_name}}"),)),
            Panel("Time blocked in train.report", "s",
                  "Seconds workers spent blocked in ray.train.report (checkpoint upload and metric sync). "
                  "A steep line means checkpointing slows training down.",
                  (("max by (ray_train_run_name) (ray_train_report_total_blocked_time_s)", "{{ray_train_run_name}}"),)),
        )),
        # The eval job (rayworks.eval.job.export_metrics) scores an export before it is served.
        Row("Evaluation (eval jobs)", (
            Panel("Eval loss (candidate vs serving)", "none",
                  "Token-weighted loss of the evaluated model (candidate) on each data source (prep:val, "
                  "jsonl), and, when the pipeline's eval stage compares, of the model now serving (serving) "
                  "on the same data. The promotion gate refuses a candidate more than "
                  "max_val_loss_regression above serving.",
                  ((f"max by (run, source, model) (ray_rayworks_eval_loss{{{EVAL_SEL}}})",
                    "{{run}} {{source}} {{model}}"),), min=None),
            Panel("Eval task scores", "percentunit",
                  "lm-evaluation-harness task metrics (acc, acc_norm, exact_match, ...) of the evaluated "
                  "model, by task. The gate's min_accuracy rules are checked against these.",
                  ((f"max by (run, task, metric) (ray_rayworks_eval_task_score{{{EVAL_SEL}}})",
                    "{{run}} {{task}} {{metric}}"),)),
            Panel("Promotion gate", "short",
                  "1 if the last evaluation passed the promotion gate (the model may be deployed), 0 if it "
                  "failed (the pipeline stops before serve; the model now serving keeps serving).",
                  ((f"max by (run) (ray_rayworks_eval_gate_passed{{{EVAL_SEL}}})", "{{run}}"),), kind="stat"),
            Panel("Eval tokens scored per second", "short",
                  "Tokens the perplexity job scored per second (all its Ray Data model actors together).",
                  ((f"max by (run, source) (ray_rayworks_eval_tokens_per_s{{{EVAL_SEL}}})", "{{run}} {{source}}"),)),
        )),
    ),
)

# ---------------------------------------------------------------- serving
SERVE = Dashboard(
    uid="rayworks-serve", title="rayworks / Serving",
    description="The OpenAI-compatible endpoint: Ray Serve's requests and latency, vLLM's engine and the API-key gate.",
    tags=("serve",),
    rows=(
        Row("Requests (Ray Serve)", (
            Panel("Requests per second, by status", "reqps",
                  "HTTP requests Serve's front door answered per second (HAProxy; Serve's own proxy on a cluster "
                  "with serve.ha_proxy: false), by application and status code.",
                  ((rate("ray_serve_num_http_requests_total", "application, status_code"),
                    "{{application}} {{status_code}}"),)),
            Panel("Error responses per second", "reqps",
                  "Requests answered with an error status (4xx or 5xx) per second, by code. 401s come from "
                  "the API-key gate, 400s from request validation, 5xx from the engine.",
                  ((rate("ray_serve_num_http_error_requests_total", "application, error_code"),
                    "{{application}} {{error_code}}"),)),
            Panel("HTTP latency (p50, p99)", "ms",
                  "Time from the front door receiving a request to the end of its response, for streaming "
                  "responses the whole stream.",
                  ((quantile(0.5, "ray_serve_http_request_latency_ms_bucket", "application"), "p50 {{application}}"),
                   (quantile(0.99, "ray_serve_http_request_latency_ms_bucket", "application"),
                    "p99 {{application}}"))),
            Panel("Healthy replicas", "short",
                  "Replicas passing their health check, by deployment. Below the configured minimum "
                  "means replicas are crashing or cannot be placed.",
                  (("sum by (application, deployment) (ray_serve_deployment_replica_healthy)",
                    "{{application}} {{deployment}}"),)),
            Panel("Replica processing latency (p99)", "ms",
                  "Time a replica spends on a request, by deployment (GatedLLMServer/LLMServer: the engine, "
                  "which also serves HTTP when one model streams directly; OpenAiIngress: the OpenAI front "
                  "end of a multi-model app).",
                  ((quantile(0.99, "ray_serve_deployment_processing_latency_ms_bucket", "deployment"),
                    "{{deployment}}"),)),
            Panel("Requests in flight at replicas", "short",
                  "Requests queued or running at each deployment's replicas. Growing steadily means the "
                  "deployment needs more replicas.",
                  (("sum by (deployment) (ray_serve_replica_processing_queries)", "{{deployment}}"),)),
        )),
        Row("Engine (vLLM)", (
            Panel("Output tokens per second", "short",
                  "Tokens generated per second, by model.",
                  ((rate("ray_vllm_generation_tokens_total", "model_name"), "{{model_name}}"),)),
            Panel("Prompt tokens per second", "short",
                  "Prompt tokens the engine prefilled per second, by model.",
                  ((rate("ray_vllm_prompt_tokens_total", "model_name"), "{{model_name}}"),)),
            Panel("Time to first token (p50, p99)", "s",
                  "Seconds from a request reaching the engine to its first generated token (queueing and "
                  "prefill). What a chat user feels as responsiveness.",
                  ((quantile(0.5, "ray_vllm_time_to_first_token_seconds_bucket", "model_name"), "p50 {{model_name}}"),
                   (quantile(0.99, "ray_vllm_time_to_first_token_seconds_bucket", "model_name"),
                    "p99 {{model_name}}"))),
            Panel("Inter-token latency (p50, p99)", "s",
                  "Seconds between consecutive output tokens of a request (decode speed as a user sees it).",
                  ((quantile(0.5, "ray_vllm_inter_token_latency_seconds_bucket", "model_name"), "p50 {{model_name}}"),
                   (quantile(0.99, "ray_vllm_inter_token_latency_seconds_bucket", "model_name"),
                    "p99 {{model_name}}"))),
            Panel("Request latency in the engine (p50, p99)", "s",
                  "Seconds from a request reaching the engine to its last token.",
                  ((quantile(0.5, "ray_vllm_e2e_request_latency_seconds_bucket", "model_name"), "p50 {{model_name}}"),
                   (quantile(0.99, "ray_vllm_e2e_request_latency_seconds_bucket", "model_name"),
                    "p99 {{model_name}}"))),
            Panel("Requests running and waiting", "short",
                  "Requests in the engine's running batch and waiting for a slot, by model. Waiting "
                  "requests mean the KV cache or the batch size is full.",
                  (("sum by (model_name) (ray_vllm_num_requests_running)", "running {{model_name}}"),
                   ("sum by (model_name) (ray_vllm_num_requests_waiting)", "waiting {{model_name}}"))),
            Panel("KV cache usage", "percentunit",
                  "Share of the engine's KV-cache blocks in use (0-100%). Near 100% new requests wait or "
                  "running ones are preempted.",
                  (("max by (model_name) (ray_vllm_kv_cache_usage_perc)", "{{model_name}}"),), min=0),
            Panel("Finished requests per second, by reason", "reqps",
                  "Requests the engine finished per second: stop (end of text or a stop string), length "
                  "(max_tokens reached) or abort (client went away).",
                  ((rate("ray_vllm_request_success_total", "model_name, finished_reason"),
                    "{{model_name}} {{finished_reason}}"),)),
        )),
        Row("Retrieval (rayworks, apps with an index attached)", (
            Panel("Retrieval queries per second", "reqps",
                  "Queries embedded and searched per second: POST /v1/retrieve (retrieve, each query of a "
                  "batch counts) and completions/chat with the rag option (rag). " + RETRIEVAL_ONLY,
                  ((rate("ray_rayworks_serve_retrieval_queries_total", "kind", 'job="serve"'), "{{kind}}"),)),
            Panel("Retrieval latency (p50, p99)", "s",
                  "Seconds to embed a request's queries with the index's model and search the index (the "
                  "Retriever deployment), before a RAG prompt reaches the engine. " + RETRIEVAL_ONLY,
                  ((quantile(0.5, "ray_rayworks_serve_retrieval_latency_s_bucket", "kind", 'job="serve"'),
                    "p50 {{kind}}"),
                   (quantile(0.99, "ray_rayworks_serve_retrieval_latency_s_bucket", "kind", 'job="serve"'),
                    "p99 {{kind}}"))),
        )),
        Row("API-key gate (rayworks)", (
            Panel("Authentication rejections per second", "reqps",
                  "Requests refused with 401 by the API-key gate, by reason (missing or wrong key). A "
                  "steady stream from one client usually means a rotated key.",
                  ((rate("ray_rayworks_serve_auth_rejections_total", "run, reason", 'job="serve"'),
                    "{{run}} {{reason}}"),)),
            Panel("Invalid requests per second", "reqps",
                  "Requests refused by validation before reaching the engine (unknown model, bad "
                  "parameters, prompt too long), by HTTP status code.",
                  ((rate("ray_rayworks_serve_rejected_requests_total", "run, code", 'job="serve"'),
                    "{{run}} {{code}}"),)),
        )),
    ),
)

# ---------------------------------------------------------------- cluster
CLUSTER = Dashboard(
    uid="rayworks-cluster", title="rayworks / Cluster overview",
    description="The Ray cluster: nodes, CPU, memory, object store, GPUs, tasks, actors and jobs.",
    tags=("cluster",),
    rows=(
        Row("Nodes and resources", (
            Panel("Alive nodes", "short",
                  "Ray nodes alive in the cluster (head and workers). Fewer than expected means the "
                  "autoscaler could not start nodes or nodes died.",
                  (("sum(ray_cluster_active_nodes)", "nodes"),), kind="stat", width=6),
            Panel("Running jobs", "short", "Ray jobs running now (prep, train, serve, ... each is one job).",
                  (("sum(ray_running_jobs)", "running"),), kind="stat", width=6),
            Panel("Logical CPUs in use", "short",
                  "Ray's logical CPUs held by tasks and actors, against the total. A job that waits with "
                  "all CPUs in use needs a bigger cluster or fewer replicas.",
                  (('sum(ray_resources{Name="CPU", State="USED"})', "used"),
                   ('sum(ray_resources{Name="CPU"})', "total"))),
            Panel("Node CPU utilization", "percent",
                  "Physical CPU utilization of each node (0-100%).",
                  (("avg by (ip) (ray_node_cpu_utilization)", "{{ip}}"),)),
            Panel("Node memory used", "bytes",
                  "Memory used on each node, against its total. Near the total, Ray's memory monitor "
                  "starts killing workers.",
                  (("sum by (ip) (ray_node_mem_used)", "used {{ip}}"), ("sum by (ip) (ray_node_mem_total)", "total {{ip}}"))),
            Panel("Object store memory", "bytes",
                  "Bytes in Ray's shared-memory object store, by location (in memory, spilled to disk, "
                  "...). Spilling slows data prep down.",
                  (("sum by (Location) (ray_object_store_memory)", "{{Location}}"),)),
        )),
        Row("GPUs", (
            Panel("GPU utilization", "percent",
                  "Utilization of each GPU (0-100%), by node. " + GPU_ONLY,
                  (("avg by (ip, GpuIndex) (ray_node_gpus_utilization)", "{{ip}} gpu {{GpuIndex}}"),)),
            Panel("GPU memory used", "decmbytes",
                  "GPU memory in use on each GPU. " + GPU_ONLY,
                  (("sum by (ip, GpuIndex) (ray_node_gram_used)", "{{ip}} gpu {{GpuIndex}}"),)),
        )),
        Row("Work", (
            Panel("Tasks by state", "short",
                  "Ray tasks in each state across the cluster (running, waiting for resources, "
                  "finished...). Many tasks pending on resources means the cluster is saturated.",
                  (("sum by (State) (ray_tasks)", "{{State}}"),)),
            Panel("Actors by state", "short",
                  "Ray actors (Serve replicas, Train workers, Data actor pools) in each state.",
                  (("sum by (State) (ray_actors)", "{{State}}"),)),
            Panel("Disk used", "bytes", "Disk space used on each node's Ray temp-dir volume.",
                  (("sum by (ip) (ray_node_disk_usage)", "{{ip}}"),)),
            Panel("Network traffic", "Bps", "Bytes per second each node sends and receives.",
                  (("sum by (ip) (ray_node_network_send_speed)", "send {{ip}}"),
                   ("sum by (ip) (ray_node_network_receive_speed)", "receive {{ip}}"))),
        )),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (CLUSTER, PREP, TRAIN, SERVE)
