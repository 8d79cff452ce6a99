"""Base-layer refinement codec: a classical base layer (AVIF) carries the structure, a
conditional diffusion decoder refines it, and the encoder bounds the fidelity loss per tile.

See docs/refine.md. Parts: :mod:`.config` (the model config), :mod:`.base_layer` (the
classical codec and its rate search), :mod:`.model` (the conditional denoiser),
:mod:`.blend` (per-tile blend weights: choice, coding), :mod:`.stream` (sections and the
describer), :mod:`.codec` (:class:`RefineCodec`).
"""
