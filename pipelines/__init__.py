"""ZenML pipelines: thin tables of contents over the steps in ``steps/``."""
