"""The `cdc` command line.

Every command turns expected failures (bad input, bad stream, wrong weights, a stream
over the decode budget) into one line on stderr that names the file and the problem, and a
non-zero exit code, never a traceback; outputs are written atomically so nothing is left
half-written. Names (files, URLs, keys) are printed with control characters, terminal
escapes and bidi controls escaped (:func:`jobs.text.printable`).

Commands that read a stream find its model themselves: the stream's header names the
codec and the weights' digest, which ``zoo.find_model`` looks up among the shipped models
and in the local model cache (:mod:`zoo.cache`: every non-shipped model the CLI loaded
with ``-m`` is remembered there). ``-m`` remains for models found neither way.

Start-up: the module imports typer and the text helpers only; torch and CompressAI are
imported by the commands that code (``info``, ``verify``, ``models`` and ``--help`` load
neither; ``tests/test_cli.py`` checks ``info``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer

from jobs.stream_targets import METADATA_HELP
from jobs.text import error_line, fail, printable
from zoo.store import default_model

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation noise

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="cdc-toolkit: diffusion-based perceptual image compression.")

DEFAULT_MODEL = default_model()  # zoo/models.json flags it ("default": true)
EXIT_USAGE, EXIT_INPUT, EXIT_STREAM = 2, 1, 3

ModelOpt = typer.Option(DEFAULT_MODEL, "--model", "-m",
                        help="Shipped model name, weights path or fsspec URL.")
StreamModelOpt = typer.Option(
    None, "--model", "-m", help="Weights path or URL (default: the model the stream names, "
                                "if shipped or in the local model cache).")
DeviceOpt = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda.")
BudgetOpt = typer.Option(
    None, "--decode-budget", metavar="LIMITS",
    help="Change decode limits, e.g. 'pixels=1e8,alloc_bytes=32GiB,pixel_steps=1e9' (fields "
         "of cdc.limits.DecodeBudget; defaults sized for 24 GB). Only for streams you trust.")


def _max_pixels_opt():
    from pipeline.files import DEFAULT_MAX_PIXELS, HARD_MAX_PIXELS

    return typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, max=HARD_MAX_PIXELS,
                        help="Refuse input images with more pixels than this (width x "
                             f"height; default {DEFAULT_MAX_PIXELS}, sized for 24 GB of RAM).")


def warn(message: str, *names: object) -> None:
    typer.echo(f"warning: {error_line(message, *names)}", err=True)


def _load_codec(model: str, device: str, precision: str | None = None,
                sha256: str | None = None):
    from cdc import WeightsError
    from zoo import load_codec, registry
    from zoo.cache import remember

    try:  # any codec: the weights file says which (CDC, DiffC, CorrDiff)
        codec = load_codec(model, device=device, precision=precision, sha256=sha256)
    except WeightsError as e:
        fail(str(e), EXIT_INPUT, model)
    if model not in registry():  # found again by digest next time (zoo.cache)
        remember(codec.weights_sha256, model)
    return codec


def _load_for_rate(model: str, rate: float | None, device: str):
    """The codec a ``--rate`` asks for: the model itself when its encoder meets targets
    (rate-controlled) or its streams cut to any prefix (progressive), else the shipped rung
    of its family measured nearest the target (see :mod:`pipeline.archive.rate`)."""
    from cdc.interface import RateControlled
    from pipeline.archive.rate import RateError, check_rate, choose_model
    from zoo import registry

    codec = _load_codec(model, device)
    if rate is None or isinstance(codec, RateControlled) or codec.progressive:
        if rate is not None:
            try:
                check_rate(rate)
            except RateError as e:
                fail(str(e), EXIT_USAGE)
        return codec
    try:
        chosen = choose_model(model, rate, registry())
    except RateError as e:
        fail(str(e), EXIT_USAGE)
    return codec if chosen == model else _load_codec(chosen, device)


def decode_budget(text: str | None):
    """The ``--decode-budget`` option as a :class:`cdc.limits.DecodeBudget` (None: defaults)."""
    from cdc.limits import DecodeBudget

    if not text:
        return None
    try:
        return DecodeBudget.parse(text)
    except ValueError as e:
        fail(f"--decode-budget: {e}", EXIT_USAGE)


def stream_model(src: object, data: bytes, model: str | None) -> tuple[str, str | None]:
    """(model, sha256 to check) to decode ``data`` with: ``model`` when given, else the one
    the stream's header names (shipped or in the local model cache); fails with one line."""
    from cdc.bitstream import read_header
    from zoo import find_model
    from zoo.cache import cache_dir

    if model:
        return model, None
    h = read_header(data, validate=False)  # BitstreamError: the caller reports it
    found = find_model(h.model_digest.hex(), h.codec)
    if found is None:
        fail(f"{src}: written by a {h.codec} model with weights {h.model_digest.hex()}…, which "
             f"is not a shipped model (nor in the local model cache, {cache_dir()}); pass "
             "--model with its weights path or URL", EXIT_INPUT, src)
    return found


ENGINES = ("auto", "onnx", "torch")


def _onnx_decoder(src: object, name: str, device: str, engine: str, steps: int | None,
                  gamma: float | None):
    """The torch-free decoder of a shipped model (a codec that registers one) for this decode
    path, or None: torch decodes. ``auto`` falls back to torch quietly when the model has no
    graphs or they do not cover the path, with a warning when they fail their checks;
    ``onnx`` fails instead."""
    if engine not in ENGINES:
        fail(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}", EXIT_USAGE)
    if engine == "torch":
        return None
    from cdc import WeightsError
    from zoo.onnx_graphs import load_onnx_decoder

    dec, why, warn = None, None, False
    if device != "cpu":
        why = f"the ONNX decoder runs on the CPU, not --device {device}"
    else:
        try:
            dec = load_onnx_decoder(name)
        except WeightsError as e:
            why, warn = str(e), True
        if dec is None and why is None:
            why = f"{name} has no ONNX graphs"
        elif dec is not None and not dec.supports(steps, gamma):
            dec, why = None, f"its ONNX graphs do not run steps {steps} at γ {gamma}"
    if dec is None and engine == "onnx":
        fail(f"{src}: --engine onnx: {why}", EXIT_USAGE, src)
    if warn:
        typer.echo(f"warning: decoding with torch: {why}", err=True)
    return dec


def check_stream_model(src: object, data: bytes, codec, model: str) -> None:
    """One line, before any decoding, if ``model`` (given with -m) is not the stream's."""
    from cdc.bitstream import DIGEST_BYTES, read_header
    from zoo import find_model

    h = read_header(data, validate=False)
    if h.codec == codec.codec_id and h.model_digest == codec.digest[:DIGEST_BYTES]:
        return
    found = find_model(h.model_digest.hex(), h.codec)
    theirs = f"{found[0]} ({h.model_digest.hex()})" if found else h.model_digest.hex()
    fail(f"{src}: written by the {h.codec} model {theirs}, but --model {model} is the "
         f"{codec.codec_id} model {codec.model_id} ({codec.digest.hex()}); "
         + ("leave out --model to use the stream's own" if found else
            "pass the weights the stream was written with"), EXIT_STREAM, src, model)


@app.command()
def compress(
    src: Path = typer.Argument(..., help="Input image (PNG, JPEG, WebP, TIFF, ...)."),
    dst: Path = typer.Argument(..., help="Output stream file (.cdc)."),
    model: str = ModelOpt,
    device: str = DeviceOpt,
    max_pixels: int = _max_pixels_opt(),
    rate: float | None = typer.Option(
        None, help="Target bits per pixel: the refine encoder meets it (any value); DiffC "
                   "keeps the prefix within it; CDC/CorrDiff pick the shipped model nearest."),
    psnr: float | None = typer.Option(
        None, help="Fidelity target (refine models): the fewest bytes whose base layer "
                   "reaches this PSNR in dB (the standard tier stays within its bound of "
                   "it); --rate is then a cap."),
    metadata: str = typer.Option("keep", help=METADATA_HELP),
) -> None:
    """Compress one image to a stream (.cdc; codec given by the model)."""
    from cdc import CodecError
    from jobs.stream_targets import check_psnr, metadata_policy, stream_file
    from pipeline.files import InputError, input_note, read_image, write_bytes_atomic

    keep = metadata_policy(metadata)
    if psnr is None:
        codec = _load_for_rate(model, rate, device)
    else:
        codec = _load_codec(model, device)
        check_psnr(codec, psnr, rate)
    reached = ""
    try:
        img = read_image(src, max_pixels)
        if note := input_note(img):
            warn(f"{src}: {note}", src)
        data, reached, meta, extra = stream_file(codec, img, src, rate, psnr, keep)
        write_bytes_atomic(dst, data)
    except (InputError, CodecError, OSError) as e:
        fail(f"{src}: {e}" if str(src) not in str(e) else str(e), EXIT_INPUT, src, dst)
    except typer.Exit:  # a RuntimeError too: fail() above already said why
        raise
    except (RuntimeError, MemoryError) as e:  # e.g. out of memory in the network
        fail(f"{src}: encoding failed ({type(e).__name__}: {e})", EXIT_INPUT, src)
    w, h = img.size
    typer.echo(f"{printable(src)} -> {printable(dst)}: {len(data)} bytes, "
               f"{8 * len(data) / (w * h):.4f} bpp" + (f", {reached}" if reached else "")
               + (f" ({extra} of them metadata, {len(meta)} field(s); --metadata none leaves "
                  "it out)" if extra else "")
               + (f" ({note})" if note else ""))


@app.command()
def decompress(
    src: Path = typer.Argument(..., help="Input .cdc stream."),
    dst: Path = typer.Argument(..., help="Output image (.png, .webp, ...)."),
    steps: int | None = typer.Option(None, help="DDIM steps (default: the model's)."),
    gamma: float | None = typer.Option(
        None, help="Start noise scale: 0 deterministic, ~0.8 perceptual."
    ),
    seed: int = typer.Option(0, help="Seed of the start noise (gamma > 0)."),
    model: str | None = StreamModelOpt,
    device: str = DeviceOpt,
    budget: str | None = BudgetOpt,
    metadata: str = typer.Option("keep", help=METADATA_HELP),
    engine: str = typer.Option(
        "auto", help="auto: a shipped refine model's ONNX graphs on the CPU where they cover "
                     "the path (preview; standard: 1 step at γ 0), else torch; onnx: refuse "
                     "otherwise; torch: always torch."),
) -> None:
    """Rebuild an image from a .cdc stream (with the model the stream names, unless -m)."""
    from cdc import BitstreamError, CodecError, WeightsError
    from cdc.bitstream import read_header
    from cdc.limits import DEFAULT_BUDGET
    from jobs.stream_targets import metadata_policy, write_decoded
    from pipeline.files import InputError, image_format_for
    from pipeline.photo_metadata import MetadataError
    from pipeline.stream_file import read_stream

    limits = decode_budget(budget)
    keep = metadata_policy(metadata)
    try:
        image_format_for(dst)
        try:
            data, meta = read_stream(src, keep)  # the codec's stream, the photo's metadata
        except MetadataError as e:
            fail(f"{e} (--metadata none decodes the image without it)", EXIT_INPUT, src)
        h = read_header(data)  # a bad header or size is refused before loading any model
        (limits or DEFAULT_BUDGET).check(f"a {h.width}x{h.height} {h.codec} stream",
                                         pixels=h.width * h.height)
        name, sha256 = stream_model(src, data, model)
        fast = None if model and engine == "auto" else \
            _onnx_decoder(src, name, device, engine, steps, gamma)
        img = None
        if fast is not None:
            try:
                img = fast.with_budget(limits).decompress(data, steps=steps, gamma=gamma)
            except WeightsError as e:  # a graph session that cannot be built
                if engine != "auto":
                    raise
                typer.echo(f"warning: decoding with torch: {e}", err=True)
        if img is None:
            codec = _load_codec(name, device, sha256=sha256)
            if model:
                check_stream_model(src, data, codec, model)
            codec.with_budget(limits)
            img = codec.decompress(data, steps=steps, gamma=gamma, seed=seed)
        write_decoded(img, dst, meta)
    except BitstreamError as e:
        fail(f"{src}: {e}", EXIT_STREAM, src)
    except (InputError, CodecError, ValueError, OSError) as e:
        fail(f"{src}: {e}" if str(src) not in str(e) else str(e), EXIT_INPUT, src, dst)
    except typer.Exit:  # a RuntimeError too: fail() above already said why
        raise
    except (RuntimeError, MemoryError) as e:  # e.g. out of memory in the network
        fail(f"{src}: decoding failed ({type(e).__name__}: {e})", EXIT_INPUT, src)
    typer.echo(f"{printable(src)} -> {printable(dst)}: {img.width}x{img.height}")


def _metadata_note(raw: bytes) -> str:
    """``cdc info``'s line for a stream file's metadata section: its size and fields."""
    try:
        names = sorted(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, TypeError):
        names = ["(not JSON)"]
    return f"{len(raw)} bytes of JSON: " + printable(", ".join(names))


def _describe_with_config(data: bytes, d: dict, config_name: str, codec: str) -> dict:
    """``cdc info`` again with the shipped model's named config, so a latent model's latent
    shapes and padding are its own (the bare describer assumes pixel-space CDC)."""
    from cdc import BitstreamError
    from cdc.describe import describe_stream
    from cdc.registry import model_preset

    try:
        cfg = model_preset(config_name, codec)
    except KeyError:
        return d
    try:
        return describe_stream(data, cfg)
    except (BitstreamError, TypeError):
        return d


@app.command()
def info(
    src: str = typer.Argument(..., help="A .cdc stream, or an archive (path or fsspec URL)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show a stream's model, size, bpp and sections, or an archive's model, tiers and
    totals (needs no model, nor torch)."""
    if "://" in src or Path(src).is_dir():
        from jobs.contents_cli import archive_info

        archive_info(src, as_json)
        return
    from cdc import BitstreamError
    from cdc.describe import describe_stream
    from cdc.stream_metadata import detach
    from pipeline.files import InputError, read_bytes
    from zoo import find_model, registry

    try:
        data, raw = detach(read_bytes(src))  # the codec's stream; the photo's metadata
        d = describe_stream(data)
    except BitstreamError as e:
        fail(f"{src}: {e}", EXIT_STREAM, src)
    except InputError as e:
        fail(str(e), EXIT_INPUT, src)
    found = find_model(d["model_digest"], d["codec"])
    shipped = registry().get(found[0]) if found else None
    if shipped and shipped.get("config"):
        d = _describe_with_config(data, d, shipped["config"], d["codec"])
    if raw is not None:
        d["metadata"] = _metadata_note(raw)
    d["model"] = (found[0] if shipped is not None else
                  f"{printable(found[0])} (local model cache)" if found else
                  "unknown (neither shipped nor in the local model cache)")
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        typer.echo(f"{k:>15}: {v}")


@app.command()
def demo(
    src: Path = typer.Option(Path("samples"), help="Folder of images to code."),
    out: Path = typer.Option(Path("out/demo"), help="Where streams and decoded images go."),
    model: str = ModelOpt,
    steps: int | None = typer.Option(None, help="DDIM steps (default: the model's)."),
    gamma: float = typer.Option(0.0, help="Start noise scale."),
) -> None:
    """Compress and decompress the sample images: the whole codec in one command."""
    import time

    from rich.console import Console
    from rich.table import Table

    from pipeline.files import read_image, save_image_atomic, write_bytes_atomic
    from pipeline.sources import list_images

    codec = _load_codec(model, "cpu")
    table = Table(title=f"cdc demo — model {codec.model_id} ({codec.weights_sha256[:12]})")
    for col in ("image", "size", "bytes", "bpp", "PSNR dB", "encode s", "decode s"):
        table.add_column(col, justify="right")
    try:
        files = list_images(str(src))
    except FileNotFoundError as e:
        fail(str(e), EXIT_INPUT, src)
    for f in files:
        img = read_image(f).convert("RGB")
        name = Path(f).stem
        t0 = time.perf_counter()
        data = codec.compress(img)
        t1 = time.perf_counter()
        rec = codec.decompress(data, steps=steps, gamma=gamma)
        t2 = time.perf_counter()
        write_bytes_atomic(out / f"{name}.cdc", data)
        save_image_atomic(rec, out / f"{name}.png")
        import numpy as np

        mse = float(np.mean((np.asarray(img, np.float64) - np.asarray(rec, np.float64)) ** 2))
        psnr = 10 * np.log10(255**2 / max(mse, 1e-10))
        table.add_row(name, f"{img.width}x{img.height}", str(len(data)),
                      f"{8 * len(data) / (img.width * img.height):.3f}", f"{psnr:.2f}",
                      f"{t1 - t0:.2f}", f"{t2 - t1:.2f}")
    Console().print(table)
    typer.echo(f"streams and decoded images in {out}/")


@app.command()
def verify(
    archive_url: str = typer.Argument(..., help="Archive path or fsspec URL."),
    data: bool = typer.Option(True, "--data/--no-data",
                              help="Read every payload and check its CRC (--no-data: "
                                   "manifests, metadata and keys only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check an archive: payload checksums, manifests, keys. Exit 0 clean, 3 if damaged."""
    from storage import Archive, ArchiveError
    from storage.check import check_archive

    try:
        arch = Archive.open(archive_url, read_only=True)
        rep = check_archive(arch, data=data)
    except (ArchiveError, OSError) as e:
        fail(str(e) if str(e).startswith(archive_url) else f"{archive_url}: {e}",
             EXIT_INPUT, archive_url)
    problems = [(f"shard {p['shard']}: " if p.get("key") is None else "") + p["error"]
                for p in rep["bad_payloads"]]
    problems += [p["error"] for p in rep["bad_manifests"]]
    problems += [f"{archive_url}: shard {p['shard']}: bad key {p['key']!r}: {p['error']}"
                 for p in rep["bad_keys"]]
    problems += [f"{archive_url}: key {d['key']!r} is stored in shards {d['shards']}"
                 for d in rep["duplicate_keys"]]
    problems += rep["other"]
    if as_json:
        typer.echo(json.dumps({**rep, "problems": len(problems)}, indent=2, default=str))
    else:
        rows = [
            ("archive", printable(archive_url)),
            ("shards", f"{rep['shards']} completed"),
            ("records", f"{rep['records']} ({rep['ok']} ok, {rep['failed']} failed images)"),
            ("payloads", "checked (CRC-32)" if data else "not read (--no-data)"),
            ("bad payloads", str(len(rep["bad_payloads"]))),
            ("bad manifests", str(len(rep["bad_manifests"]))),
            ("bad keys", str(len(rep["bad_keys"]))),
            ("duplicate keys", str(len(rep["duplicate_keys"]))),
        ]
        if rep["other"]:
            rows.append(("other problems", str(len(rep["other"]))))
        rows.append(("verdict", "clean" if rep["clean"] else f"{len(problems)} problem(s)"))
        for k, v in rows:
            typer.echo(f"{k:>15}: {v}")
    for line in problems[:20]:
        typer.echo(f"error: {error_line(line, archive_url)}", err=True)
    if len(problems) > 20:
        typer.echo(f"error: ... and {len(problems) - 20} more (see --json)", err=True)
    if not rep["clean"]:
        raise typer.Exit(EXIT_STREAM)


@app.command()
def models() -> None:
    """List shipped models."""
    from cdc.presets import PRESETS
    from zoo import registry

    for name, e in registry().items():
        typer.echo(f"{name}: {e.get('description', '')} (sha256 {e['sha256'][:16]}…, "
                   f"{e.get('params', '?')} params, {e.get('train_steps', '?')} steps)")
    typer.echo(f"presets: {', '.join(PRESETS)}")


def _register_subcommands() -> None:
    """Commands that live in their own modules (archive jobs on Ray, evaluation, training)."""
    from jobs import contents_cli, eval_cli, ray_cli, train_cli

    ray_cli.register(app)
    contents_cli.register(app)
    eval_cli.register(app)
    train_cli.register(app)


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
