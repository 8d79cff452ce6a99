"""An ONNX model's ``metadata_props`` read from its bytes, with neither onnx nor onnxruntime.

Why: a preview decode needs the refiner graph's metadata (config, weights digest, space) but
none of its sessions; importing onnxruntime and building five sessions cost a `cdc
decompress --steps 0` about a third of its time. ONNX files are protobuf ``ModelProto``
messages whose field 14 holds the ``StringStringEntryProto`` pairs (key = 1, value = 2); this
walks the top-level fields, skipping the rest (the graph) by its length.
"""

from __future__ import annotations

from cdc.bitstream import read_varint
from cdc.errors import CorruptStreamError

METADATA_FIELD = 14
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The container's LEB128 varint reader (protobuf uses the same), as a ValueError."""
    try:
        return read_varint(data, pos, len(data))
    except CorruptStreamError as e:
        raise ValueError(str(e)) from None


def _fields(data: bytes):
    """(field number, value) of each top-level field: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            value, pos = data[pos:pos + size], pos + size
        elif wire == _BYTES:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data) or number == 0:
            raise ValueError("truncated or malformed protobuf")
        yield number, value


def metadata(model: bytes) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict; ValueError when the bytes are no protobuf."""
    out: dict[str, str] = {}
    for number, value in _fields(model):
        if number != METADATA_FIELD or not isinstance(value, bytes):
            continue
        pair = {n: v for n, v in _fields(value) if isinstance(v, bytes)}
        try:
            out[pair.get(1, b"").decode()] = pair.get(2, b"").decode()
        except UnicodeDecodeError as e:
            raise ValueError(f"metadata entry not UTF-8 ({e})") from None
    return out
