"""ZenML steps: short typed wrappers that call into ``medloc_core``."""
