"""Data: dataset readers, synthetic datasets, records/quarantine tables and preprocessing.

Boxes are ``(x1, y1, x2, y2)`` floats in original-image pixels (continuous coordinates) in records; the
prepared table adds the same box in the Qwen2.5-VL model-input frame (``in_x1..in_y2``).
"""
