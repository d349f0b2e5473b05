"""Experiment tracking (MLflow): a shared layer below the job areas, above config; every area may log through it."""
