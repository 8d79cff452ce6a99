"""ONNX graphs of shipped models: written beside the weights, loaded without torch.

For codecs that register ONNX hooks (:class:`cdc.registry.CodecEntry`; today the refine
codec's TAEF2-latent models), :func:`write_onnx` (needs torch and onnx: a maintainer's
step after shipping weights) exports a model's graphs (:mod:`cdc.refine.onnx_export`) into
``zoo/weights/onnx/``: ``<model>.onnx`` (its sha256 in the model's registry entry under
``onnx``) and TAEF2's four parts once (``taef2_*.onnx``, their sha256 and the ``.pth``
digests they come from in ``taef2.json``). :func:`load_onnx_decoder` reads them back with
every digest checked, importing no torch, and refuses graphs that do not belong to the
weights the registry ships (a model shipped again without its graphs re-exported).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cdc.errors import WeightsError
from zoo.store import package_dir, registry, sha256_hex, update_entry

ONNX_DIR = "weights/onnx"
SPACE_MANIFEST = "taef2.json"


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return sha256_hex(data)


def write_onnx(name: str, zoo_dir: str | Path | None = None) -> dict[str, Any]:
    """Export shipped model ``name``'s graphs (and its space's) into the zoo; returns its
    registry entry's new ``onnx`` field."""
    from cdc.registry import entry, resolve
    from zoo.loader import codec_from_bytes
    from zoo.store import read_verified_bytes

    zoo = Path(zoo_dir) if zoo_dir else package_dir()
    data, source = read_verified_bytes(name) if zoo_dir is None else _read_in(zoo, name)
    codec = codec_from_bytes(data, source)
    hook = entry(codec.codec_id).onnx_export
    if not hook:
        raise WeightsError(f"{name}: {codec.codec_id} models have no ONNX graphs")
    try:
        model_graph, space_graphs, components = resolve(hook)(codec)
    except ValueError as e:
        raise WeightsError(str(e)) from None
    folder = zoo / ONNX_DIR
    manifest: dict[str, Any] = {"from": components, "parts": {}}
    for part, graph in space_graphs.items():
        file = f"taef2_{part}.onnx"
        manifest["parts"][part] = {"file": file, "sha256": _write(folder / file, graph)}
    _write(folder / SPACE_MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n")
           .encode())
    field = {"file": f"{ONNX_DIR}/{name}.onnx",
             "sha256": _write(folder / f"{name}.onnx", model_graph),
             "space": f"{ONNX_DIR}/{SPACE_MANIFEST}"}
    update_entry(name, {"onnx": field}, zoo_dir=zoo)
    return field


def _read_in(zoo: Path, name: str) -> tuple[bytes, str]:
    entry = _registry(zoo)[name]
    data = (zoo / entry["file"]).read_bytes()
    if sha256_hex(data) != entry["sha256"]:
        raise WeightsError(f"{zoo / entry['file']}: sha256 does not match models.json")
    return data, str(zoo / entry["file"])


def _verified(path: Path, sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror or e})") from None
    if sha256_hex(data) != sha256:
        raise WeightsError(f"{path}: sha256 {sha256_hex(data)} does not match the expected "
                           f"{sha256}")
    return data


def _registry(zoo_dir: str | Path | None) -> dict[str, Any]:
    """The installed registry, or the one of another zoo folder."""
    return json.loads((Path(zoo_dir) / "models.json").read_text()) if zoo_dir else registry()


def has_onnx(name: str, zoo_dir: str | Path | None = None) -> bool:
    return "onnx" in _registry(zoo_dir).get(name, {})


def load_onnx_decoder(name: str, zoo_dir: str | Path | None = None,
                      threads: int | None = None) -> Any:
    """The torch-free decoder of shipped model ``name`` (its codec's registered
    ``onnx_decoder``), or ``None`` when it has none. Raises :class:`WeightsError` when a file
    differs from its digest or the graphs come from other weights than the registry's."""
    zoo = Path(zoo_dir) if zoo_dir else package_dir()
    entry = _registry(zoo_dir).get(name)
    if not entry or "onnx" not in entry:
        return None
    from cdc.registry import codec_of, resolve
    from cdc.registry import entry as codec_entry

    hook = codec_entry(codec_of(entry)).onnx_decoder
    if not hook:
        return None
    decoder_class = resolve(hook)
    field = entry["onnx"]
    refiner = _verified(zoo / field["file"], field["sha256"])
    manifest_path = zoo / field["space"]
    try:
        manifest = json.loads(manifest_path.read_text())
        parts = {p: _verified(manifest_path.parent / f["file"], f["sha256"])
                 for p, f in manifest["parts"].items()}
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{manifest_path}: bad ONNX space manifest ({e})") from None
    dec = decoder_class(refiner, parts, threads)
    if dec.weights_sha256 != entry["sha256"]:
        raise WeightsError(f"{zoo / field['file']}: exported from weights "
                           f"{dec.weights_sha256[:16]}…, but {name} ships "
                           f"{entry['sha256'][:16]}…: run `cdc export-onnx {name}` again")
    if dec.space_components != manifest.get("from"):
        raise WeightsError(f"{manifest_path}: TAEF2 graphs from other weights than the "
                           f"refiner's space ({dec.space_components})")
    return dec
