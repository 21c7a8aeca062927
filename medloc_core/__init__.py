"""MedLoc core library: boxes, rewards, curriculum scheduler, datasets, models and metrics.

This package never imports ZenML; heavy libraries (torch, transformers, trl) are imported only inside the
modules that need them, so ``import medloc_core`` stays cheap.
"""

__version__ = "0.1.0"
