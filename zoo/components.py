"""Load a codec space's pretrained components from the package (digest-checked).

``cdc`` builds spaces from state dicts it is handed; this is where the shipped files
(``zoo/weights/taef2_*.pth``, MIT, see NOTICE) are read, their sha256 checked
against the digests the space (or a weights file) names, and a file that differs is
refused — the autoencoder is frozen, never a silently different network.
"""

from __future__ import annotations

import functools
import hashlib
import io
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from cdc.errors import WeightsError
from cdc.spaces import Space, build_space
from cdc.spaces import taef2 as _taef2

#: Shipped pretrained components: name → (package file, sha256).
COMPONENTS: dict[str, tuple[str, str]] = {
    "taef2_encoder": (f"weights/{_taef2.ENCODER_FILE}", _taef2.ENCODER_SHA256),
    "taef2_decoder": (f"weights/{_taef2.DECODER_FILE}", _taef2.DECODER_SHA256),
}


def component_bytes(name: str, sha256: str | None = None, path: str | Path | None = None) -> bytes:
    """The bytes of component ``name`` (shipped, or at ``path``), refused unless the digest fits."""
    if name not in COMPONENTS and path is None:
        raise WeightsError(f"unknown pretrained component {name!r}; shipped: {sorted(COMPONENTS)}")
    file, shipped_digest = COMPONENTS.get(name, (None, None))
    expected = (sha256 or shipped_digest or "").lower()
    source = str(path) if path is not None else f"shipped component {name!r}"
    try:
        data = Path(path).read_bytes() if path is not None else \
            (resources.files("zoo") / file).read_bytes()  # type: ignore[operator]
    except OSError as e:
        raise WeightsError(f"{source}: cannot read ({e.strerror or e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if expected and digest != expected:
        raise WeightsError(f"{source}: sha256 {digest} does not match the expected {expected}")
    return data


@functools.lru_cache(maxsize=8)
def component_state(name: str, sha256: str | None = None) -> dict[str, torch.Tensor]:
    data = component_bytes(name, sha256)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"component {name!r}: not a readable state dict ({e})") from e


def component_states(digests: dict[str, str]) -> dict[str, dict[str, torch.Tensor]]:
    """Component name → state dict, for the digests a weights file names."""
    return {name: component_state(name, sha) for name, sha in digests.items()}


def load_space(spec: str | dict[str, Any], components: dict[str, str] | None = None) -> Space:
    """A space by name (``"pixel"``, ``"taef2"``) or spec, with its components digest-checked.

    ``components`` maps component name → sha256 as a weights file records them.
    """
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    if spec.get("name") == "taef2":
        wanted = components or {k: COMPONENTS[k][1] for k in ("taef2_encoder", "taef2_decoder")}
        states = {k: component_state(k, v) for k, v in wanted.items()}
        return build_space(spec, states)
    return build_space(spec)
