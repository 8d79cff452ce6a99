"""What ``cdc compress`` and ``cdc decompress`` add around a codec: a rate or a fidelity target
(the encoder's own target, a progressive stream's prefix cap, or the fewest bytes that reach
a PSNR, with a note of what the photo reached) and the ``--metadata`` policy of a stream
file (:mod:`pipeline.stream_file`)."""

from __future__ import annotations

from jobs.text import fail

EXIT_USAGE = 2  # as in jobs.cli (README: 1 input, 2 usage)
METADATA_HELP = ("Capture metadata (EXIF date, camera, exposure, GPS; XMP rating, keywords) "
                 "and the file time, kept in the stream file and written back: keep, no-gps "
                 "(drop the location), none.")


def metadata_policy(text: str):
    """``--metadata`` checked (usage error naming the choices)."""
    from pipeline.photo_metadata import POLICIES

    if text not in POLICIES:
        fail(f"--metadata: {text!r} is not one of {', '.join(POLICIES)}", EXIT_USAGE)
    return text


def write_decoded(img, dst, meta: dict) -> None:
    """The decoded image at ``dst`` (format by its extension) with ``meta`` written in (PNG,
    JPEG, WebP) and the source file's time, as ``cdc get`` writes a record."""
    from pipeline.archive.outputs import restore_file_time
    from pipeline.files import encode_image, image_format_for, write_bytes_atomic
    from pipeline.photo_metadata import embed

    fmt = image_format_for(dst)
    write_bytes_atomic(dst, embed(encode_image(img, fmt), fmt, meta))
    restore_file_time(dst, meta)


def check_psnr(codec, psnr: float, rate: float | None) -> None:
    """``--psnr``: refused with one line unless the codec aims at fidelity targets
    (:func:`pipeline.archive.rate.check_psnr`)."""
    from pipeline.archive.rate import RateError
    from pipeline.archive.rate import check_psnr as check

    try:
        check(codec, psnr, rate)
    except RateError as e:
        fail(str(e), EXIT_USAGE)


def compress_at(codec, img, rate: float | None, psnr: float | None = None
                ) -> tuple[bytes, str]:
    """One stream at ``rate``: the encoder's own target, or a progressive prefix cap; or at
    the fidelity target ``psnr`` (the rate a cap). Also a note of what a target reached."""
    from cdc.interface import RateControlled
    from pipeline.archive.rate import cap_stream

    if psnr is not None:
        return compress_to_psnr(codec.with_rate(rate, psnr=psnr), img, psnr)
    if rate is not None and isinstance(codec, RateControlled):
        return codec.with_rate(rate).compress(img), ""
    data = codec.compress(img)
    if rate is not None and codec.progressive:
        data = cap_stream(codec, data, rate)
    return data, ""


def compress_to_psnr(codec, img, psnr: float) -> tuple[bytes, str]:
    """A stream at a fidelity target, and a note of the base and standard tiers' PSNR (the
    encoder decodes both anyway)."""
    from cdc.image import array_to_tensor, to_rgb_array
    from pipeline.metrics.pixel import psnr as psnr_db

    (data, recons), = codec.compress_with_reconstructions([img])
    x = (array_to_tensor(to_rgb_array(img)[0]) + 1) / 2  # the samples the encoder coded

    def db(y) -> float:
        y = ((y.clamp(-1, 1) + 1) * 127.5).round() / 255  # the 8-bit image decoded
        return float(psnr_db(y[None], x))

    base = db(recons[(0, 0.0, 0)])
    tiers = [db(v) for k, v in recons.items() if k[0] > 0]
    note = f"PSNR {base:.2f} dB base" + (f", {tiers[0]:.2f} dB standard" if tiers else "")
    if base < psnr - 0.005:
        cap = "the --rate cap" if codec.rate is not None else "the most the base layer takes"
        note += f"; the target {psnr:g} dB is not reached within {cap}"
    return data, note


def stream_file(codec, img, src, rate: float | None, psnr: float | None, keep: str
                ) -> tuple[bytes, str, dict, int]:
    """(the file's bytes, a note of what a target reached and of metadata left out, the
    metadata kept, its bytes): the stream and the photo's metadata section
    (:mod:`pipeline.stream_file`). A rate-controlled encoder aims at the rate less the
    metadata's bytes, so the file meets ``--rate``; where the metadata would take over half
    of it (a tiny image at a low rate) it is left out, and a prefix-capped stream (DiffC
    under ``--rate``) has no trailer to keep it under."""
    from cdc.interface import RateControlled
    from pipeline.stream_file import metadata_bytes, photo_metadata, with_metadata

    meta = photo_metadata(img, src, keep)
    room, why = metadata_bytes(meta), ""
    if rate is not None and isinstance(codec, RateControlled) and room:
        left = rate - 8 * room / (img.width * img.height)
        if left < rate / 2:
            meta, why = {}, "metadata left out: it would take over half of --rate"
        else:
            rate = left
    data, reached = compress_at(codec, img, rate, psnr)
    bare = len(data)
    data, kept = with_metadata(data, meta)
    if meta and not kept:
        why = "metadata left out: a stream cut to a prefix has no room for it"
    note = ", ".join(n for n in (reached, why) if n)
    return data, note, meta if kept else {}, len(data) - bare

