"""Retrieval area: the `embed` job (chunk + embed on Ray Data) and the `index` job (FAISS)."""
