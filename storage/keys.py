"""Validation of record keys and tier ids.

Keys end up as paths: the decompress job writes ``<out>/<key>``, and people copy them into
shell commands. So a key must be a relative, normalised, printable POSIX path that cannot
climb out of wherever it is joined to. We refuse bad keys at write time, rather than
sanitising them, because a silently renamed image is worse than a clear error. "Printable"
includes no format characters (Unicode category Cf): a bidi override such as U+202E makes
``abc\u202egpj.exe`` display as ``abcexe.jpg``, and zero-width characters make two
different keys look the same. :func:`bad_keys` and :func:`key_problems` check the keys
already in an archive (one written by other software, or before these rules).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from .errors import BadKeyError

MAX_KEY_BYTES = 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
TIER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TIER = TIER_ID
# controls, format characters (bidi controls, zero-width), lone surrogates, line/para separators
_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def key_problem(key: object) -> str | None:
    """Return why ``key`` is not a valid record key, or ``None`` when it is."""
    if not isinstance(key, str):
        return f"keys are str, got {type(key).__name__}"
    if not key:
        return "key is empty"
    for ch in key:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            name = unicodedata.name(ch, "")
            return f"key contains the control character U+{ord(ch):04X}" + (
                f" ({name})" if name else "")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"key is longer than {MAX_KEY_BYTES} UTF-8 bytes"
    if "\\" in key:
        return "key contains a backslash (use '/' as the separator)"
    if key.startswith("/") or _DRIVE.match(key):
        return "key is an absolute path"
    for part in key.split("/"):
        if part == "..":
            return "key contains '..' and would escape the archive"
        if part in ("", "."):
            return "key has an empty or '.' path component"
    return None


def check_key(key: object, where: str = "") -> str:
    """Return ``key`` unchanged or raise :class:`BadKeyError` naming it and ``where``."""
    problem = key_problem(key)
    if problem:
        prefix = f"{where}: " if where else ""
        raise BadKeyError(f"{prefix}bad key {key!r}: {problem}")
    return key  # type: ignore[return-value]


def bad_keys(keys: Iterable[object]) -> list[tuple[object, str]]:
    """``(key, why)`` for every key in ``keys`` that :func:`key_problem` refuses, in order."""
    return [(k, why) for k in keys if (why := key_problem(k)) is not None]


def key_problems(keys: Iterable[object], where: str = "") -> list[str]:
    """One message per bad key, worded like :func:`check_key`'s error (for a verify report:
    ``problems += key_problems(meta.keys, f"{url}: shard {s}")``)."""
    prefix = f"{where}: " if where else ""
    return [f"{prefix}bad key {k!r}: {why}" for k, why in bad_keys(keys)]


def check_tier_id(tier: object, where: str = "") -> str:
    """Tier ids become one path component of the cache area, so keep them plain."""
    if not isinstance(tier, str) or not _TIER.match(tier):
        prefix = f"{where}: " if where else ""
        raise BadKeyError(
            f"{prefix}bad tier id {tier!r}: use 1-64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    return tier
