"""TAEF2's tiling plan and memory estimates, without torch.

Shared by :class:`cdc.spaces.taef2.TAEF2Space` and the torch-free ONNX decoder
(:mod:`cdc.refine.onnx_decoder`), so both split an image the same way and both decode
budgets refuse the same streams.
"""

from __future__ import annotations

from cdc.tiling import call_area

STRIDE = 8
#: Tile margins: the encoder trunk's receptive-field radius is ≈ 72 px, the decoder tail's
#: ≈ 5 latent px; margins in the units of each part's input.
ENCODER_MARGIN, DECODER_MARGIN = 128, 8
#: Full-resolution 64-channel maps alive at once in a local part (a block's input, a
#: convolution's input and output, oneDNN's reordered copies).
_LOCAL_MAPS = 5
#: Channels of the decoder head's widest block: its input and two 256-channel GroupNorm-branch
#: maps, plus the norm's own.
_HEAD_CHANNELS = 832


def encode_bytes(tile: int, h: int, w: int, batch: int = 1) -> int:
    """Estimated peak bytes of an encode of (batch, 3, h, w), float32: the full-resolution
    trunk's largest call (a tile of ``tile`` + 2·128 px a side, or the whole image when it
    is no larger), about five 64-channel maps."""
    return 4 * batch * _LOCAL_MAPS * 64 * call_area(h, w, tile, ENCODER_MARGIN)


def decode_bytes(tile: int, h: int, w: int, batch: int = 1) -> int:
    """Estimated peak bytes of a decode to (batch, 3, h, w), float32, beyond the image: the
    stride-8 head runs on the whole map, then its 64-channel output stays while the tail's
    largest call (``tile`` + 2·64 px a side, or the whole image when no larger) holds about
    five 64-channel maps at full resolution."""
    lh, lw = -(-h // STRIDE), -(-w // STRIDE)
    head = _HEAD_CHANNELS * lh * lw
    t = tile // STRIDE
    tail = 64 * lh * lw + _LOCAL_MAPS * 64 * STRIDE * STRIDE * call_area(lh, lw, t,
                                                                          DECODER_MARGIN)
    return 4 * batch * max(head, tail)
