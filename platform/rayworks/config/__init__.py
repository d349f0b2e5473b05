"""Strict pydantic configs: the cluster spec and one model per job kind."""
