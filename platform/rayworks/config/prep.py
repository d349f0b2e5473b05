"""The `prep` job: raw text in, packed token shards + tokenizer + manifest out.

Example (jobs/configs/prep.yaml)::

    kind: prep
    name: python-docs
    inputs:
      - path: ../../artifacts/corpus/python-docs/*.jsonl
        format: jsonl
    tokenizer: {vocab_size: 4096}
    seq_len: 256

Everything except ``execution`` decides the output bytes; ``execution`` only decides
how fast they are produced (it is left out of the manifest and its hash, so runs with
different parallelism give byte-identical manifests).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel
from rayworks.config.jobs import Bundle, JobBase
from rayworks.config.quality import DecontamConfig, LanguageConfig, PiiConfig, QualityConfig


class InputSpec(StrictModel):
    """One input: a path, glob or URI and how to read the documents in it."""

    path: str = Field(..., description="File, directory, glob (*, ?, **) or s3:// / gs:// URI of the input files.")
    format: Literal["text", "jsonl", "parquet"] = Field(
        "text", description="text: plain UTF-8 text; jsonl: JSON Lines with a text field; parquet: a text column.")
    text_mode: Literal["file", "line"] = Field(
        "file", description="For format=text: one document per file, or one per non-empty line.")
    text_field: str = Field("text", description="JSON field (jsonl) or column (parquet) holding the document text.")


class CleanConfig(StrictModel):
    """Document cleaning; every dropped document is counted by reason."""

    normalize: Literal["NFC", "NFKC", "none"] = Field("NFC", description="Unicode normalisation form applied to every document.")
    strip_control: bool = Field(True, description="Remove C0/C1 control characters except tab and newline (CR/CRLF become LF).")
    min_chars: int = Field(1, ge=1, description="Documents shorter than this (after cleaning) are dropped as too_short.")
    max_chars: int = Field(1_000_000, ge=1, description="Documents longer than this (after cleaning) are dropped as too_long.")
    on_decode_error: Literal["replace", "drop"] = Field(
        "replace", description="Undecodable UTF-8 bytes: replace with U+FFFD, or drop the document (reason undecodable).")

    @model_validator(mode="after")
    def _check(self) -> "CleanConfig":
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) > max_chars ({self.max_chars}); lower min_chars")
        return self


class NearDupConfig(StrictModel):
    """Near-duplicate removal with MinHash-LSH; each cluster keeps its first document in input order."""

    shingle: Literal["word", "char"] = Field("word", description="Shingles: word n-grams (lower-cased words) or character n-grams.")
    shingle_size: int = Field(5, ge=1, le=64, description="Words (or characters) per shingle.")
    num_perm: int = Field(128, ge=2, le=1024, description="MinHash permutations: the signature length; must equal bands * rows.")
    bands: int = Field(16, ge=1, description="LSH bands: documents sharing all rows of any one band become candidates.")
    rows: int = Field(8, ge=1, description="Signature rows per LSH band.")
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity at or above which two documents are near-duplicates "
                                                         "(the cut for verify; with verify off the bands alone decide).")
    seed: int = Field(1, ge=0, description="Seed of the shingle hash and the permutation family.")
    verify: bool = Field(True, description="Compute the true Jaccard of each LSH candidate pair and keep only pairs at or above threshold.")

    @model_validator(mode="after")
    def _check(self) -> "NearDupConfig":
        if self.bands * self.rows != self.num_perm:
            raise ValueError(f"bands * rows ({self.bands} * {self.rows} = {self.bands * self.rows}) must equal num_perm "
                             f"({self.num_perm}); e.g. num_perm: {self.bands * self.rows}")
        return self


class TokenizerConfig(StrictModel):
    """Load an existing tokenizer, or train a byte-level BPE one on a sample of the corpus."""

    path: str | None = Field(None, description="Hugging Face tokenizer directory to load (local). Unset: train one.")
    vocab_size: int = Field(4096, ge=300, le=1_000_000, description="Vocabulary size of the trained tokenizer (specials included).")
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency for a BPE merge.")
    sample_mb: float = Field(32.0, gt=0, description="Size of the deterministic training sample of cleaned, deduplicated text, in MB.")
    eos_token: str = Field("<|endoftext|>", description="End-of-text token placed between packed documents.")
    pad_token: str = Field("<|pad|>", description="Padding token.")
    extra_special_tokens: list[str] = Field(default_factory=list, description="More special tokens for a trained tokenizer.")


class ExecutionConfig(StrictModel):
    """How fast, never what: nothing here changes the output bytes."""

    num_workers: int | None = Field(None, ge=1, description="Parallel tasks per stage; default: the cluster's CPUs (at most 64).")
    num_cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs each task reserves.")


class PrepJob(JobBase):
    """Read, clean, deduplicate, tokenize and pack corpora into Parquet token shards."""

    kind: Literal["prep"] = Field("prep", description="Always prep.")
    inputs: list[InputSpec] = Field(..., min_length=1, description="Input files (paths, globs, URIs) and their formats.")
    output_uri: str | None = Field(None, description="Output directory or URI; default {storage}/prep/{name}.")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Cleaning rules.")
    dedup: bool = Field(True, description="Drop exact duplicate documents across all inputs (the first in input order is kept).")
    near_dup: NearDupConfig | None = Field(None, description="Near-duplicate removal (MinHash-LSH) after exact dedup; unset: off.")
    pii: PiiConfig | None = Field(None, description="PII redaction (e-mail, IP, phone -> placeholders) before tokenization; unset: off.")
    quality: QualityConfig | None = Field(None, description="Quality rule sets (gopher, c4), or a dry run of them; unset: off.")
    language: LanguageConfig | None = Field(None, description="Language identification with a keep-list; unset: off.")
    decontam: DecontamConfig | None = Field(None, description="Drop (or report) documents sharing n-grams with an eval set; unset: off.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="Tokenizer to load or train.")
    seq_len: int = Field(256, ge=8, le=1_048_576, description="Tokens per packed sequence (row).")
    val_fraction: float = Field(0.01, ge=0, lt=1, description="Share of documents (chosen by content hash) in the val split.")
    seed: int = Field(0, ge=0, description="Seed for the train/val split and the tokenizer sample.")
    unit_mb: float = Field(16.0, gt=0, description="Work-unit size in MB: inputs are cut into units of about this size; "
                                                    "one output shard per unit and split. Changes the shard layout.")
    on_bad_file: Literal["fail", "skip"] = Field(
        "fail", description="A corrupt input file fails the job (naming it), or is skipped and listed in the manifest.")
    keep_work: bool = Field(False, description="Keep the _work/ intermediates after success (for debugging).")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig, description="Parallelism; does not change outputs.")
    tracking: bool = Field(True, description="Log this build to MLflow (the cluster spec's `tracking`): the config, "
                                             "counts by drop reason, throughput and the manifest. false/off: no "
                                             "MLflow run. Does not change outputs.")

    path_fields: ClassVar[tuple[str, ...]] = ("inputs[].path", "output_uri", "tokenizer.path", "decontam.path",
                                              "quality.inspection_path")

    def resource_request(self) -> list[Bundle]:
        n = self.execution.num_workers or 1
        return [Bundle(num_cpus=1, what="prep driver"),
                Bundle(num_cpus=self.execution.num_cpus_per_worker, count=n, what="prep workers")]

    # Inputs and the tokenizer folder are checked by rayworks.data.preflight (KINDS["prep"]).

    def explicit_output(self) -> str | None:
        return self.output_uri
