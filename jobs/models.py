"""Getting the same model into every Ray worker.

A shipped model name or a URL resolves the same on every node. A local weights path may
exist only on the driver's machine, so the driver also puts the file's bytes in Ray's
object store and hands workers ``[ObjectRef]``; a worker loads the path itself when it has
the file, else fetches the bytes. Either way the weights' SHA-256 must equal the driver's.

The reference travels with each task, not in an actor's constructor arguments: Ray warns
(rightly) that an actor with ``max_restarts`` whose constructor arguments live in the object
store may fail to restart if they are lost, so actors load the model lazily on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def is_local_file(model: str) -> bool:
    return "://" not in model and Path(model).is_file()


def weights_ref(model: str) -> list[Any] | None:
    """``[ObjectRef]`` of a local weights file (call inside a Ray session), else None."""
    if not is_local_file(model):
        return None
    import ray

    return [ray.put(Path(model).read_bytes())]


def load_codec(model: str, expected_sha256: str, weights: list[Any] | bytes | None = None, *,
               device: str = "cpu", precision: str | None = None):
    """The codec for ``model`` in a worker; refuses weights with another digest.

    Any codec of the toolkit (CDC, DiffC, CorrDiff): ``zoo`` dispatches on the codec id
    stored in the weights file, so jobs never need to know which codec an archive uses.
    """
    from cdc import WeightsError
    from zoo import codec_from_bytes
    from zoo import load_codec as zoo_load_codec

    expected = expected_sha256.lower().removeprefix("sha256:")
    codec = None
    if is_local_file(model) or weights is None:
        try:
            # a local file with other bytes than the driver's raises here (sha256 given),
            # and then the driver's bytes are used below
            codec = zoo_load_codec(model, device=device, precision=precision,
                                   sha256=expected if is_local_file(model) else None)
        except WeightsError:
            if weights is None:
                raise
    if codec is None and weights is not None:
        import ray

        data = weights if isinstance(weights, bytes) else ray.get(weights[0])
        codec = codec_from_bytes(data, model, device=device, precision=precision)
    assert codec is not None
    if codec.weights_sha256 != expected:
        raise WeightsError(f"{model}: weights on this node differ from the driver's "
                           f"({codec.weights_sha256[:12]} != {expected[:12]})")
    return codec


def load_decoding_codec(model: str, *, device: str = "cpu", threads: int | None = None,
                        expected_sha256: str | None = None,
                        weights: list[Any] | bytes | None = None, precision: str | None = None):
    """The codec to *decode* with: for a shipped model with ONNX graphs, on the CPU at the
    default precision, its codec's ``onnx_codec`` (refine: preview and standard without torch,
    torch loaded only for the rest, :class:`cdc.refine.onnx_codec.OnnxFirstRefineCodec`); else
    the torch codec: :func:`load_driver_codec`, or, given ``expected_sha256`` (a worker: `cdc
    export`'s actors, the HTTP service), :func:`load_codec` with the driver's ``weights``.
    ``threads``: onnxruntime's threads (None: its default, every core).
    Graphs that fail their digest checks are skipped with a warning (torch decodes)."""
    expected = expected_sha256.lower().removeprefix("sha256:") if expected_sha256 else None

    def torch_codec():
        if expected is None:
            return load_driver_codec(model, device=device, precision=precision)
        return load_codec(model, expected, weights, device=device, precision=precision)

    if device == "cpu" and weights is None and precision is None and not is_local_file(model):
        import logging

        from cdc import WeightsError
        from zoo.onnx_graphs import load_onnx_decoder

        try:
            dec = load_onnx_decoder(model, threads=threads)
        except WeightsError as e:
            logging.getLogger(__name__).warning("decoding with torch: %s", e)
            dec = None
        if dec is not None and expected is not None and dec.weights_sha256 != expected:
            dec = None  # not the driver's weights: the torch path refuses them in one line
        if dec is not None:  # the codec protocol over it, as the codec registers it
            from cdc.registry import codec_of, entry, resolve
            from zoo import registry

            wrap = resolve(entry(codec_of(registry()[model])).onnx_codec)
            return wrap(dec, torch_codec)
    return torch_codec()


def budget_of(fields: dict[str, Any] | None):
    """A :class:`cdc.limits.DecodeBudget` from the fields a job config carries (None: the
    defaults). Configs carry a plain dict so they stay picklable and readable."""
    from cdc.limits import DecodeBudget

    return DecodeBudget.from_dict(fields) if fields else None


def load_driver_codec(model: str, *, device: str = "cpu", precision: str | None = None):
    """The codec the driver plans with (any codec id; digest-checked by ``zoo``)."""
    from zoo import load_codec as zoo_load_codec

    return zoo_load_codec(model, device=device, precision=precision, sha256=None)
