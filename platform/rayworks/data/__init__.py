"""Data prep on Ray Data: read, clean, dedup, tokenize, pack, write (the `prep` job kind).

Stages are small modules (inputs, read, clean, dedup, tokenizer, pack) that never
import the executor; :mod:`rayworks.data.job` runs them over work units with Ray Data
and completion markers. Training reads the output through :mod:`rayworks.data.manifest`.
"""
