"""One registration per codec: everything the toolkit needs to find a codec by its id.

The bitstream reader (id byte ↔ name), the zoo (codec class for a weights file), ``cdc
info`` (stream describer), the named model presets, and ``cdc train`` / ``cdc export-model``
(trainer and exporter) all read this table and nothing else. Entries name their parts as
``"module:attribute"`` strings, resolved on first use, so a codec's code (and the
training stack, which lives in ``pipeline``) is imported only when it is needed.

Adding a codec: write its config dataclass, model and codec class (subclass of
:class:`cdc.base.BaseCodec`), a describer, a trainer module with ``run_training`` and
``export`` if it has anything to train, then add one :class:`CodecEntry` below
(docs/codec.md, "Adding a codec"). Code outside the toolkit (a plugin, a test's toy codec)
adds its entry at run time with :func:`register` and removes it with :func:`unregister`;
every reader of the table (bitstream, zoo, ``cdc info``, ``cdc train``) sees it at once.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CodecEntry:
    name: str  # the id in weights files, archives and the CLI
    byte: int  # the id byte in every stream's header (never reused)
    codec: str  # "module:Class" of the codec (a BaseCodec)
    describe: str  # "module:function" (stream bytes → dict) for ``cdc info``: no model, no torch
    presets: str  # "module:DICT" of named model configs (presets; not training YAMLs)
    #: "module" with run_training(config, run_dir, ...) and export(...); empty: nothing to
    #: train (``cdc train`` and ``cdc export-model`` refuse the codec in one line)
    trainer: str = ""
    summary: str = ""
    #: "module:function" ``(obj, source, fetch) -> obj`` for weights files that name other
    #: weights files by digest instead of holding them (CorrDiff's base): it returns the
    #: self-contained dict, getting each named file's dict from the zoo through ``fetch``
    #: (:data:`cdc.weights.FetchWeights`). Empty: the codec's files are self-contained.
    complete_weights: str = ""
    #: A torch-free decoder for some decode paths, from ONNX graphs the zoo ships beside the
    #: weights (empty: none). ``onnx_export``: "module:function" ``(codec) -> (model graph,
    #: {part: space graph}, space component digests)`` (needs torch and onnx);
    #: ``onnx_decoder``: "module:Class" ``(model graph, {part: graph}, threads)`` with
    #: ``supports(steps, gamma)`` and ``decompress``; ``onnx_codec``: "module:Class"
    #: ``(decoder, load_torch_codec)``, the codec protocol over it for the archive readers.
    onnx_export: str = ""
    onnx_decoder: str = ""
    onnx_codec: str = ""


CODECS: dict[str, CodecEntry] = {e.name: e for e in (
    CodecEntry("cdc", 0, "cdc.codec:CDCCodec", "cdc.describe:describe_container",
               "cdc.presets:PRESETS",
               "pipeline.training.train_cdc", "Conditional Diffusion Compression (Yang & Mandt)"),
    CodecEntry("diffc", 1, "cdc.diffc.codec:DiffCCodec", "cdc.diffc.stream:describe",
               "cdc.diffc.model:DIFFC_CONFIGS", "pipeline.training.train_diffc",
               "DiffC: diffusion prior + reverse-channel coding (Theis et al.)"),
    CodecEntry("corrdiff", 2, "cdc.corrdiff.codec:CorrDiffCodec",
               "cdc.describe:describe_container",
               "cdc.presets:PRESETS", "pipeline.training.train_corrdiff",
               "CorrDiff: CDC + encoder-chosen end-to-end correction (Ma et al.)",
               complete_weights="cdc.corrdiff.codec:complete_weights"),
    CodecEntry("refine", 3, "cdc.refine.codec:RefineCodec", "cdc.refine.stream:describe",
               "cdc.refine.config:REFINE_CONFIGS", "pipeline.training.train_refine",
               "AVIF base layer + conditional diffusion refinement, per-tile fidelity bound",
               onnx_export="cdc.refine.onnx_export:export_graphs",
               onnx_decoder="cdc.refine.onnx_decoder:OnnxRefineDecoder",
               onnx_codec="cdc.refine.onnx_codec:OnnxFirstRefineCodec"),
)}

BY_BYTE: dict[int, str] = {e.byte: e.name for e in CODECS.values()}
#: name → id byte (``cdc.bitstream.CODEC_IDS`` is this dict, so it follows :func:`register`).
BYTES: dict[str, int] = {e.name: e.byte for e in CODECS.values()}

#: The codec of weights files, registry entries and training configs that name none (they
#: predate codec ids): the only place generic code gets a codec's name from.
DEFAULT_CODEC = "cdc"


def entry(name: str) -> CodecEntry:
    try:
        return CODECS[name]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; known: {', '.join(CODECS)}") from None


def register(new: CodecEntry) -> CodecEntry:
    """Add a codec to the table at run time (what a line in ``CODECS`` does at import).

    Refuses a name or id byte already taken (bytes are never reused) and a byte outside
    0..255. Every reader of the table sees the codec at once: streams with its byte parse,
    the zoo loads its weights files, ``cdc info`` describes its streams."""
    if new.name in CODECS:
        raise ValueError(f"codec {new.name!r} is already registered")
    if not 0 <= new.byte <= 0xFF:
        raise ValueError(f"codec id byte {new.byte} is not in 0..255")
    if new.byte in BY_BYTE:
        raise ValueError(f"codec id byte {new.byte} is taken by {BY_BYTE[new.byte]!r}")
    CODECS[new.name] = new
    BY_BYTE[new.byte] = new.name
    BYTES[new.name] = new.byte
    return new


def unregister(name: str) -> CodecEntry:
    """Remove a codec :func:`register` added (tests undo their registrations with it)."""
    old = entry(name)
    del CODECS[name], BY_BYTE[old.byte], BYTES[name]
    return old


def resolve(ref: str) -> Any:
    """``"module:attr"`` → the object (``"module"`` → the module)."""
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def codec_class(name: str) -> type:
    return resolve(entry(name).codec)


def codec_of(obj: dict[str, Any]) -> str:
    """The codec a weights dict, registry entry or training config names (old ones: CDC)."""
    return str(obj.get("codec", DEFAULT_CODEC))


def model_preset(name: str, codec: str | None = None) -> Any:
    """A named model config (preset) of ``codec`` (or of any codec when None)."""
    names = [codec] if codec else list(dict.fromkeys(CODECS))
    for c in names:
        table = resolve(entry(c).presets)
        if name in table:
            return table[name]
    known = sorted({k for c in names for k in resolve(entry(c).presets)})
    raise KeyError(f"unknown model preset {name!r}; known: {', '.join(known)}")
