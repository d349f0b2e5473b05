"""Configs of prep's curation stages: quality rules, language ID, PII redaction, decontamination.

Each stage is optional in the prep YAML (unset = off). The quality rules come as named
rule sets (``gopher``, ``c4``), each a model whose fields are the rules' thresholds; a
field set to null turns that one rule off. Every document a rule drops is counted under
its own reason (``quality.word_count``, ...: see ``rayworks.data.quality.REASONS``).

Example::

    quality:
      gopher: {min_words: 50, max_symbol_word_ratio: 0.1}
      c4: {min_words_per_line: 3, max_curly_braces: 0}
      dry_run: false
    language: {languages: [en, de, fr], keep: [en], min_confidence: 0.5}
    pii: {}
    decontam: {path: evals/hellaswag.jsonl, ngram: 13}
"""

from __future__ import annotations

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel

# Gopher's stop words (Rae et al. 2021, appendix A): a real English page has at least two.
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherRules(StrictModel):
    """Document-level rules of the Gopher paper (MassiveText); defaults are the paper's values."""

    min_words: int | None = Field(50, ge=0, description="Fewer words (whitespace-separated) drops the document (quality.word_count).")
    max_words: int | None = Field(100_000, ge=1, description="More words drops the document (quality.word_count).")
    min_mean_word_length: float | None = Field(3.0, ge=0, description="Mean word length below this drops (quality.mean_word_length).")
    max_mean_word_length: float | None = Field(10.0, gt=0, description="Mean word length above this drops (quality.mean_word_length).")
    max_symbol_word_ratio: float | None = Field(
        0.1, ge=0, description="('#' + '...' + '…') occurrences per word above this drops (quality.symbol_ratio).")
    max_ellipsis_line_ratio: float | None = Field(
        0.3, ge=0, le=1, description="Share of non-empty lines ending in '...' or '…' above this drops (quality.ellipsis_lines).")
    max_bullet_line_ratio: float | None = Field(
        0.9, ge=0, le=1, description="Share of non-empty lines starting with a bullet (-, *, •, ...) above this drops "
                                     "(quality.bullet_lines).")
    max_duplicate_line_ratio: float | None = Field(
        0.3, ge=0, le=1, description="Share of non-empty lines that repeat an earlier line above this drops "
                                     "(quality.duplicate_lines).")
    max_duplicate_line_char_ratio: float | None = Field(
        0.2, ge=0, le=1, description="Share of characters in repeated lines above this drops (quality.duplicate_lines).")
    max_duplicate_paragraph_ratio: float | None = Field(
        0.3, ge=0, le=1, description="Share of paragraphs (blocks between blank lines) that repeat an earlier "
                                     "paragraph above this drops (quality.duplicate_paragraphs).")
    max_duplicate_paragraph_char_ratio: float | None = Field(
        0.2, ge=0, le=1, description="Share of characters in repeated paragraphs above this drops "
                                     "(quality.duplicate_paragraphs).")
    max_top_ngram_ratio: dict[int, float] = Field(
        default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16},
        description="n -> limit: share of word characters covered by the most frequent word n-gram above the limit "
                    "drops (quality.top_ngram). Empty: rule off.")
    max_duplicate_ngram_ratio: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> limit: share of word characters inside word n-grams that occur more than once above the "
                    "limit drops (quality.duplicate_ngram). Empty: rule off.")
    min_stop_words: int | None = Field(2, ge=0, description="Fewer stop-word occurrences drops (quality.stop_words).")
    stop_words: list[str] = Field(list(GOPHER_STOP_WORDS), description="Lower-case stop words counted by min_stop_words.")
    min_alpha_word_ratio: float | None = Field(
        0.8, ge=0, le=1, description="Share of words with at least one letter below this drops (quality.alpha_words).")

    @model_validator(mode="after")
    def _check(self) -> "GopherRules":
        for lo, hi in (("min_words", "max_words"), ("min_mean_word_length", "max_mean_word_length")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo} ({a}) > {hi} ({b}); lower {lo} or raise {hi}")
        for name in ("max_top_ngram_ratio", "max_duplicate_ngram_ratio"):
            for n, r in getattr(self, name).items():
                if not (1 <= n <= 20) or not (0 <= r <= 1):
                    raise ValueError(f"{name}: {n}: {r}: n must be 1-20 and the ratio 0-1")
        return self


class C4Rules(StrictModel):
    """Line-level rules of C4 (Raffel et al. 2020): remove lines (counted per rule), then drop documents
    left with too few lines; optionally drop documents with curly braces (code) outright."""

    terminal_punctuation: bool = Field(True, description="Remove lines not ending in . ! ? \" or ' (c4.no_terminal_punct).")
    min_words_per_line: int | None = Field(3, ge=1, description="Remove lines with fewer words (c4.short_line).")
    javascript: bool = Field(True, description="Remove lines mentioning 'javascript' (c4.javascript).")
    lorem_ipsum: bool = Field(True, description="Remove lines containing 'lorem ipsum' (c4.lorem_ipsum).")
    policy: bool = Field(True, description="Remove lines with cookie/privacy-policy/terms-of-use boilerplate (c4.policy).")
    policy_phrases: list[str] = Field(
        ["terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies"],
        description="Lower-case phrases the policy rule looks for.")
    min_lines: int = Field(3, ge=0, description="Documents keeping fewer lines after the line rules are dropped "
                                                "(quality.c4_too_few_lines).")
    max_curly_braces: int | None = Field(
        None, ge=0, description="Documents with more '{' than this are dropped (quality.c4_curly_braces); C4 used 0, "
                                "which removes most code. Unset: off.")


class QualityConfig(StrictModel):
    """Named quality rule sets; each rule that drops a document counts it under its own reason."""

    gopher: GopherRules | None = Field(None, description="Gopher document rules ({} for the paper's thresholds; unset: off).")
    c4: C4Rules | None = Field(None, description="C4 line rules ({} for the defaults; unset: off).")
    dry_run: bool = Field(
        False, description="Drop and remove nothing: write what each rule would drop (key, rule, measured value, "
                           "first 200 chars) to the inspection file, to tune thresholds before a full run.")
    inspect_fraction: float = Field(
        1.0, gt=0, le=1, description="Share of documents (chosen by content hash) recorded in the inspection file.")
    inspection_path: str | None = Field(
        None, description="Inspection JSON Lines file (local path); default {output}/inspection.jsonl. Records of "
                          "language.dry_run and decontam.dry_run go there too.")

    @model_validator(mode="after")
    def _check(self) -> "QualityConfig":
        if self.gopher is None and self.c4 is None:
            raise ValueError("no rule set: set gopher: {} and/or c4: {} (or remove quality: to turn it off)")
        return self


class LanguageConfig(StrictModel):
    """Language identification with lingua (models ship inside its wheel); keep-list + confidence."""

    languages: list[str] = Field(["en", "de", "fr", "es", "it", "nl", "pt"], min_length=2,
                                 description="ISO 639-1 codes the detector chooses among (fewer: faster, and no "
                                             "confusion with languages the corpus cannot contain).")
    keep: list[str] = Field(["en"], min_length=1, description="ISO 639-1 codes to keep; others drop as lang.other.")
    min_confidence: float = Field(0.5, ge=0, le=1, description="Kept-language documents below this confidence "
                                                               "drop as lang.low_confidence.")
    low_accuracy: bool = Field(False, description="lingua's low-accuracy mode: much faster, less accurate on short text.")
    max_chars: int = Field(2000, ge=16, description="Characters of each document the detector reads (from the start).")
    dry_run: bool = Field(False, description="Drop nothing; record what would drop in the inspection file.")

    @model_validator(mode="after")
    def _check(self) -> "LanguageConfig":
        try:
            from lingua import IsoCode639_1
        except ImportError:  # schemas load without the optional package; the job's worker needs it
            IsoCode639_1 = None
        for name in ("languages", "keep"):
            for code in getattr(self, name):
                if not (len(code) == 2 and code.isalpha() and code.islower()):
                    raise ValueError(f"{name}: {code!r} is not a lower-case ISO 639-1 code (e.g. en, de)")
                if IsoCode639_1 is not None and not hasattr(IsoCode639_1, code.upper()):
                    raise ValueError(f"{name}: {code!r} is not a language lingua knows")
        missing = sorted(set(self.keep) - set(self.languages))
        if missing:
            raise ValueError(f"keep: {missing} not in languages; add them to languages")
        return self


class PiiConfig(StrictModel):
    """PII redaction before tokenization: matches become placeholders, counted per kind."""

    email: bool = Field(True, description="Replace e-mail addresses with <EMAIL> (pii.email).")
    ip: bool = Field(True, description="Replace IPv4 and IPv6 addresses with <IP_ADDRESS> (pii.ipv4, pii.ipv6).")
    phone: bool = Field(True, description="Replace phone numbers (+country or North American forms) with <PHONE> (pii.phone).")


class DecontamConfig(StrictModel):
    """Drop (or report) documents sharing a word n-gram with an evaluation set."""

    path: str = Field(..., description="Evaluation set: a local JSON Lines file.")
    text_fields: list[str] = Field(["text"], min_length=1,
                                   description="Fields of each line whose text is decontaminated against (joined).")
    ngram: int = Field(13, ge=3, le=64, description="n-gram length in words (after lower-casing and removing punctuation).")
    dry_run: bool = Field(False, description="Report only: record matching documents in the inspection file, drop none.")
