"""Training: one loop every codec's trainer shares, the trainers, their configs and data.

* :mod:`~pipeline.training.trainer`: run folder, resumable checkpoint, relay, EMA and the
  loop (:class:`~pipeline.training.trainer.TrainerBase`); ``python -m
  pipeline.training.trainer RUN_DIR OUT_DIR`` saves a relay artifact.
* :mod:`~pipeline.training.training_config`: the YAML files in ``configs/`` (families,
  rungs) and :class:`~pipeline.training.training_config.TrainConfigBase`.
* One trainer per codec, named in ``cdc.registry``: ``train_cdc``, ``train_diffc``,
  ``train_corrdiff``, ``train_refine``.
* Training data: :mod:`~pipeline.training.image_crops` (random crops of image files),
  :mod:`~pipeline.training.latent_cache` (TAEF2 latents of the photos, cached once, and
  their crops), :mod:`~pipeline.training.refine_pairs` and
  :mod:`~pipeline.training.refine_latents` (the refine codec's (original, base decode)
  pairs, in pixels and as latents).
"""
