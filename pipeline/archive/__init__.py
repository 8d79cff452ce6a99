"""Archive stages: image files -> records in a chunked archive, and records -> images.

This package's ``__init__`` is the stages' public face: everything is re-exported from the
module that does it, so ``from pipeline.archive import X`` works for any of them.

Forward (what ``cdc archive`` runs on every encoder, with or without Ray):

1. :func:`plan_inputs` lists the sources and gives every file a key, and
   :func:`plan_shards` cuts the keys not yet archived into shards
   (:mod:`pipeline.archive.planning`).
2. :func:`encode_shard` runs one shard (:mod:`pipeline.archive.encoding`): read + validate images
   with retries (:mod:`pipeline.archive.input_loading`), group them by padded size
   (:func:`group_batches`, :mod:`pipeline.archive.batching`) so ``compress_batch`` stacks equal
   shapes, encode, make one :class:`storage.Record` per image, and commit the shard in one
   piece, handing the compute lock to the next shard for the commit
   (:mod:`pipeline.archive.handoff`).
3. :func:`open_or_create` opens the archive for the codec or creates it
   (:mod:`pipeline.archive.opening`) with the tiers of :mod:`pipeline.archive.codec_tiers`;
   :func:`claim_is_stale` judges a dead writer's claim (:mod:`pipeline.archive.claims`).

Backward (what ``cdc get``, ``cdc export`` and ``cdc serve`` run): :class:`Reader` looks a
key up, reads its record (one ranged read), and decodes it at a quality tier, through a
local disk LRU and optionally the archive's own cache area (:mod:`pipeline.archive.record_reader`,
formats in :mod:`pipeline.archive.outputs`); without a codec it loads the archive's own model
(:func:`open_archive`, :func:`archive_codec`).

A codec with only the core calls gets the rest of ``cdc.ImageCodec`` from
:mod:`pipeline.archive.codec_adapter` where it enters; the stages call methods.
Nothing here imports Ray: the jobs layer distributes these stages.
"""

from __future__ import annotations

from pipeline.archive.batching import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BATCH_PIXELS,
    group_batches,
    padded,
)
from pipeline.archive.claims import claim_is_stale
from pipeline.archive.codec_adapter import codec_config, full_codec, pad_multiple, weights_digest
from pipeline.archive.codec_tiers import (
    PROGRESSIVE_PREVIEW_BPP,
    base_tiers,
    match_tiers,
    tier_paths,
    tiers_for,
)
from pipeline.archive.encoding import EncodeOptions, encode_images, encode_shard, make_record
from pipeline.archive.input_loading import (
    DEFAULT_READ_RETRIES,
    Loaded,
    load_item,
    validate_image,
)
from pipeline.archive.opening import open_or_create
from pipeline.archive.outputs import MEDIA_TYPES, OUTPUT_FORMATS, output_format, output_name
from pipeline.archive.planning import (
    DEFAULT_SHARD_SIZE,
    InputItem,
    ShardPlan,
    free_shard_numbers,
    plan_inputs,
    plan_shards,
)
from pipeline.archive.record_reader import (
    Decoded,
    DecodeError,
    FailedRecordError,
    Reader,
    archive_codec,
    open_archive,
    resolve_model,
)
from pipeline.files import DEFAULT_MAX_PIXELS

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_BATCH_PIXELS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_READ_RETRIES",
    "DEFAULT_SHARD_SIZE",
    "MEDIA_TYPES",
    "OUTPUT_FORMATS",
    "PROGRESSIVE_PREVIEW_BPP",
    "DecodeError",
    "Decoded",
    "EncodeOptions",
    "FailedRecordError",
    "InputItem",
    "Loaded",
    "Reader",
    "ShardPlan",
    "archive_codec",
    "base_tiers",
    "claim_is_stale",
    "codec_config",
    "encode_images",
    "encode_shard",
    "free_shard_numbers",
    "full_codec",
    "group_batches",
    "load_item",
    "make_record",
    "match_tiers",
    "open_archive",
    "open_or_create",
    "output_format",
    "output_name",
    "pad_multiple",
    "padded",
    "plan_inputs",
    "plan_shards",
    "resolve_model",
    "tier_paths",
    "tiers_for",
    "validate_image",
    "weights_digest",
]
