"""Text the CLI prints about user-controlled names (file names, URLs, archive keys).

A file name may hold a newline (it splits an error line in two), a terminal escape
sequence (it can recolour or hide what follows) or a bidi control such as U+202E (it
displays ``gpj.exe`` for ``exe.jpg``). :func:`printable` shows every such character as a
Python-style escape (``\\n``, ``\\x1b``, ``\\u202e``), so a line stays one line and a name
reads as what it is.
"""

from __future__ import annotations

from typing import NoReturn


def _escape(ch: str) -> str:
    o = ord(ch)
    if ch in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch]
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def printable(text: object) -> str:
    """``text`` with every non-printable character escaped: C0/C1 controls (newline, ESC,
    DEL), format characters (bidi controls U+200E/U+200F, U+202A-U+202E, U+2066-U+2069,
    zero-width characters), line/paragraph separators, non-space blanks, lone surrogates
    (undecodable bytes in a file name) and unassigned code points. Ordinary text, spaces
    and non-ASCII letters are left alone; backslashes are not doubled."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in s)


def one_line(message: object) -> str:
    """The first line of a message (some libraries' errors run over many lines), with
    anything non-printable in it escaped."""
    lines = [ln.strip() for ln in str(message).strip().splitlines() if ln.strip()]
    if len(lines) <= 1:
        return printable(lines[0]) if lines else ""
    return printable(lines[0]) + " …"


def error_line(message: object, *names: object) -> str:
    """One printable line for ``message``: each of ``names`` (the file, URL or key the
    message is about) is escaped where it occurs first, so a newline inside a name cannot
    cut the line short; then the rest is cut to its first line and escaped."""
    msg = str(message)
    for n in names:
        n = str(n) if n is not None else ""
        if n and not n.isprintable():
            msg = msg.replace(n, printable(n))
    return one_line(msg)


__all__ = ["error_line", "one_line", "printable"]


def fail(message: str, code: int = 1, *names: object) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr (``names`` escaped where they occur)
    and exit with ``code`` (1 input, 2 usage, 3 undecodable stream): every CLI command's
    expected failure."""
    import typer

    typer.echo(f"error: {error_line(message, *names)}", err=True)
    raise typer.Exit(code)
