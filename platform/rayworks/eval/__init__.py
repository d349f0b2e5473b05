"""Evaluation area: the `eval` job (perplexity on Ray Data, lm-evaluation-harness task suites) and the promotion gate."""
