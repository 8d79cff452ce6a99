"""Stages between files and codecs, in parts by concern.

* :mod:`pipeline.archive`: archive stages, files -> records -> images (planning, input
  loading, batching, encoding, tiers, reading back through the decode caches).
* :mod:`pipeline.training`: the training loop, a trainer per codec, configs, training data.
* :mod:`pipeline.evaluation`: evaluations, their reports and merges, BD-rate, classical codecs.
* :mod:`pipeline.metrics`: image quality metrics (also training losses).

Shared by all of them: :mod:`pipeline.files` (reading and validating images, atomic
writes) and :mod:`pipeline.sources` (folders, globs, URLs and lists to image files). The
parts import one another without a cycle (``tests/test_layering.py``).
"""
