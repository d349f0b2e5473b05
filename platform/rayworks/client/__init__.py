"""Code that runs where the user types: the CLI, job submission and its preflight, the
pipeline orchestrator, serving rollout, lineage and local monitoring.

Nothing on the cluster imports this package: job runners (`rayworks.data`, `.train`,
`.serve`, `.generate`) start from `rayworks.jobmain` and read only configs, storage and
manifests (the import-linter contracts in pyproject.toml keep it so).
"""
