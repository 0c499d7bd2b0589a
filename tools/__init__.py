"""Commands and helpers around the pipeline (run from the repository root as `python -m tools.NAME`)."""
