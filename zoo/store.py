"""Weights files on disk, in the package or at a URL: reading (digest-checked) and shipping.

This is the toolkit's only place that reads or writes model files; ``cdc`` turns their
bytes into models. A shipped model's sha256 lives in ``zoo/models.json``; any other file
is checked against a digest the caller gives or a sidecar ``<file>.sha256``.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from cdc.errors import WeightsError

REGISTRY_FILE = "models.json"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_dir() -> Path:
    return Path(__file__).parent


def registry() -> dict[str, dict[str, Any]]:
    """Shipped models: name → {file, sha256, codec, config name, description, ...}."""
    path = resources.files("zoo") / REGISTRY_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


#: The default model when a registry flags none (the first shipped model).
FALLBACK_DEFAULT = "cdc-small"


def default_model() -> str:
    """The shipped model ``cdc compress``/``archive`` use without ``--model``: the registry
    entry with ``"default": true`` (one rung of the latent ladder), else cdc-small."""
    flagged = sorted(name for name, e in registry().items() if e.get("default") is True)
    return flagged[0] if flagged else FALLBACK_DEFAULT


def shipped_by_digest(digest_prefix: str) -> str | None:
    """The shipped model whose sha256 starts with ``digest_prefix`` (hex), if any."""
    for name, entry in registry().items():
        if entry.get("sha256", "").startswith(digest_prefix.lower()):
            return name
    return None


def _read_source(source: str) -> bytes:
    if "://" in source:
        import fsspec

        try:
            with fsspec.open(source, "rb") as f:
                return f.read()
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"{source}: cannot read weights ({e})") from e
    path = Path(source)
    if not path.is_file():
        raise WeightsError(f"{source}: no such weights file (and no shipped model of that name: "
                           f"{', '.join(sorted(registry())) or 'none shipped'})")
    return path.read_bytes()


def read_verified_bytes(name_or_path: str, sha256: str | None = None) -> tuple[bytes, str]:
    """The bytes of shipped model ``name``, or of a weights file at a path or fsspec URL.

    The digest is checked against the registry for shipped models, against
    ``sha256`` when given, or against a sidecar ``<file>.sha256`` when present;
    a mismatch is an error, never a silently different model.
    """
    reg = registry()
    if name_or_path in reg:
        entry = reg[name_or_path]
        data = (resources.files("zoo") / entry["file"]).read_bytes()
        expected, source = entry["sha256"], f"shipped model {name_or_path!r}"
    else:
        data, source = _read_source(name_or_path), name_or_path
        expected = sha256
        if expected is None and "://" not in name_or_path:
            side = Path(name_or_path + ".sha256")
            if side.is_file():
                expected = side.read_text().split()[0]
    digest = sha256_hex(data)
    if expected is not None and digest != expected.lower():
        raise WeightsError(f"{source}: sha256 {digest} does not match the expected {expected}")
    return data, source


def ship_weights(data: bytes, name: str, codec: str, zoo_dir: str | Path | None = None,
                 entry: dict | None = None) -> Path:
    """Write a weights file + ``.sha256`` into the zoo and add it to ``models.json``.

    Shared by every codec's export step, so all shipped models carry the same
    registry fields (file, sha256, codec) and are loadable by :func:`zoo.load_codec`.
    """
    zoo = Path(zoo_dir) if zoo_dir else package_dir()
    (zoo / "weights").mkdir(parents=True, exist_ok=True)
    path = zoo / "weights" / f"{name}.pt"
    tmp = path.with_suffix(".pt.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    digest = sha256_hex(data)
    path.with_suffix(".pt.sha256").write_text(f"{digest}  {path.name}\n")
    _edit_registry(zoo, lambda reg: reg.__setitem__(name, {
        **(entry or {}), "file": f"weights/{path.name}", "sha256": digest, "codec": codec}))
    return path


def update_entry(name: str, fields: dict[str, Any], zoo_dir: str | Path | None = None) -> dict:
    """Add registry-only facts to a shipped model's entry (its ``family``, a measured
    ``rate``): never the file or digest, which only :func:`ship_weights` writes."""
    bad = {"file", "sha256", "codec"} & set(fields)
    if bad:
        raise ValueError(f"update_entry: {sorted(bad)} are written by ship_weights only")
    zoo = Path(zoo_dir) if zoo_dir else package_dir()
    out: dict[str, Any] = {}

    def edit(reg: dict) -> None:
        if name not in reg:
            raise KeyError(f"{zoo / REGISTRY_FILE}: no model {name!r}")
        reg[name] = {**reg[name], **fields}
        out.update(reg[name])

    _edit_registry(zoo, edit)
    return out


DEFAULT_TARGET_BPP = 0.15  # the default model is the rung nearest this rate


def flag_default(family: str, target_bpp: float = DEFAULT_TARGET_BPP,
                 zoo_dir: str | Path | None = None) -> str:
    """Flag as the default model the rung of ``family`` whose recorded rate is nearest
    ``target_bpp`` (and unflag every other model); returns its name. Run after a rung's
    rate is re-measured, since retraining moves rates."""
    zoo = Path(zoo_dir) if zoo_dir else package_dir()
    chosen: list[str] = []

    def edit(reg: dict) -> None:
        rates = {n: float(e["rate"]["bpp"]) for n, e in reg.items()
                 if e.get("family") == family and isinstance(e.get("rate"), dict)
                 and "bpp" in e["rate"]}
        if not rates:
            raise KeyError(f"{zoo / REGISTRY_FILE}: no model of family {family!r} has a rate")
        name = min(sorted(rates), key=lambda n: abs(rates[n] - target_bpp))
        for n, e in reg.items():
            if n == name:
                e["default"] = True
            else:
                e.pop("default", None)
        chosen.append(name)

    _edit_registry(zoo, edit)
    return chosen[0]


def set_default(name: str, zoo_dir: str | Path | None = None) -> str:
    """Flag ``name`` as the default model and unflag every other one (a rate-controlled
    model has no ladder to choose from: it meets any target itself)."""
    zoo = Path(zoo_dir) if zoo_dir else package_dir()

    def edit(reg: dict) -> None:
        if name not in reg:
            raise KeyError(f"{zoo / REGISTRY_FILE}: no model {name!r}")
        for n, e in reg.items():
            if n == name:
                e["default"] = True
            else:
                e.pop("default", None)

    _edit_registry(zoo, edit)
    return name


def _edit_registry(zoo: Path, edit) -> None:
    """Read, edit and atomically replace ``models.json`` under an exclusive lock, so two
    exports running at once (two rungs shipped in parallel) cannot drop each other's entry."""
    import fcntl

    reg_path = zoo / REGISTRY_FILE
    zoo.mkdir(parents=True, exist_ok=True)
    with open(zoo / (REGISTRY_FILE + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reg = json.loads(reg_path.read_text()) if reg_path.exists() else {}
        edit(reg)
        tmp = reg_path.with_suffix(".json.tmp")  # the lock keeps one writer at a time
        tmp.write_text(json.dumps(reg, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, reg_path)
