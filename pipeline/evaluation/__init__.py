"""Evaluation: codecs ("entries") × images → per-image CSV, summary JSON, plots, BD-rates.

* :mod:`~pipeline.evaluation.runner`: runs an evaluation (``cdc eval``) and re-exports
  what its callers need; :mod:`~pipeline.evaluation.entries` builds what it compares,
  :mod:`~pipeline.evaluation.progress` is the folder a stopped run goes on from,
  :mod:`~pipeline.evaluation.report` writes the CSV, plots, BD-rates and table.
* :mod:`~pipeline.evaluation.merge` joins finished evaluations (``cdc eval-merge``);
  :mod:`~pipeline.evaluation.panels` draws the visual panels (``--panels``).
* :mod:`~pipeline.evaluation.bdrate` (Bjøntegaard delta rate) and
  :mod:`~pipeline.evaluation.classical` (JPEG, WebP, AVIF, HEIC, JPEG XL baselines).

The metrics themselves are :mod:`pipeline.metrics` (also a training loss).
"""
