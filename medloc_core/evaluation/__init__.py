"""Evaluation: the metrics (``metrics``: A@τ, pseudo-mAP, mIoU, bootstrap intervals, the paired gain, MLflow keys) and
running a model on a prepared table (``runner``). Definitions: ``docs/method.md`` §9."""
