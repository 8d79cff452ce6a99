"""The archive commands of the `cdc` CLI: ``archive``, ``get``, ``export``, ``serve``.

``register(app)`` adds them to the main typer app (jobs/cli.py). Same conventions as the
codec commands: expected failures print one line ``error: <archive/key/file>: <problem>``
on stderr and exit non-zero (1 input/archive, 2 usage, 3 undecodable stream); outputs are
written atomically; names are printed escaped (:func:`jobs.text.printable`). Ray is imported
only by the commands that use it, and only after the arguments and the archive check out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from jobs.stream_targets import metadata_policy
from jobs.text import error_line, one_line, printable
from jobs.text import fail as _fail
from pipeline.files import DEFAULT_MAX_PIXELS, HARD_MAX_PIXELS
from zoo.store import default_model

DEFAULT_MODEL = default_model()  # zoo/models.json flags it ("default": true)
EXIT_INPUT, EXIT_USAGE, EXIT_STREAM = 1, 2, 3


def _report_failures(failures: list[dict[str, str]], limit: int = 20) -> None:
    for f in failures[:limit]:
        key, msg = f["key"], f["error"]
        named = msg.split(": ", 1)[0].endswith(key)  # already "<file or url/key>: ..."
        msg = error_line(msg, key, f.get("url"))
        typer.echo(f"error: {msg}" if named else f"error: {printable(key)}: {msg}", err=True)
    if len(failures) > limit:
        typer.echo(f"error: ... and {len(failures) - limit} more (see --json)", err=True)


def _report_notes(notes: list[dict[str, str]], limit: int = 20) -> None:
    """One ``warning:`` line per input the job changed beyond the codec's own conversion
    (an animated image's other frames dropped)."""
    for n in notes[:limit]:
        typer.echo(f"warning: {printable(n['key'])}: {one_line(n['note'])}", err=True)
    if len(notes) > limit:
        typer.echo(f"warning: ... and {len(notes) - limit} more (see --json)", err=True)


def _finish(summary: dict, title: str, rows: Callable[[dict], list], as_json: bool) -> None:
    """Print a job's summary (table or JSON); exit 1 naming each input that did not make it."""
    from jobs.progress import print_table, summary_table

    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        print_table(summary_table(title, rows(summary)))
    _report_notes(summary.get("notes", []))
    if not summary["complete"]:
        _report_failures(summary["failures"])
        raise typer.Exit(EXIT_INPUT)


_ADDRESS_HELP = "Join this Ray cluster (default: start a local Ray for the job, on 127.0.0.1)."
_BUDGET_HELP = ("Change decode limits, e.g. 'pixels=1e8,alloc_bytes=32GiB' (fields of "
                "cdc.limits.DecodeBudget; defaults sized for 24 GB). Only for archives you trust.")


_METADATA_HELP = ("Capture metadata (EXIF date, camera, exposure, GPS) written into PNG, JPEG "
                  "and WebP outputs: keep, no-gps (drop the location), none.")


def _budget_fields(text: str | None) -> dict[str, int] | None:
    """``--decode-budget`` as the changed DecodeBudget fields (usage error if malformed)."""
    if not text:
        return None
    from cdc.limits import DecodeBudget

    try:
        budget = DecodeBudget.parse(text)
    except ValueError as e:
        _fail(f"--decode-budget: {e}", EXIT_USAGE)
    default = DecodeBudget().to_dict()
    return {k: v for k, v in budget.to_dict().items() if v != default[k]}


def archive_cmd(
    src: str = typer.Argument(..., help="Folder, glob, fsspec URL or .txt/.lst list of images."),
    archive_url: str = typer.Argument(..., help="Archive path or fsspec URL (created if absent)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m",
                              help="Shipped model name, weights path or fsspec URL."),
    rate: float | None = typer.Option(
        None, help="Target bits per pixel: the refine encoder meets it per image; caps "
                   "DiffC streams at that rate; for CDC/CorrDiff picks the shipped model "
                   "of that codec measured nearest it."),
    psnr: float | None = typer.Option(
        None, help="Fidelity target (refine models): each image gets the fewest bytes whose "
                   "base layer reaches this PSNR in dB (the standard tier stays within its "
                   "bound of it); --rate is then a cap."),
    address: str | None = typer.Option(None, help=_ADDRESS_HELP),
    num_cpus: int | None = typer.Option(None, help="CPUs of the local Ray (default: all)."),
    actors: int | None = typer.Option(None, help="Encoder actors (default: one per GPU, "
                                                    "else CPUs / --cpus-per-actor)."),
    cpus_per_actor: float = typer.Option(1.0, help="CPUs (torch threads) per actor."),
    gpus_per_actor: float | None = typer.Option(
        None, help="GPUs per actor (default: 1 where Ray sees GPUs, else 0)."),
    precision: str | None = typer.Option(None, help="bf16/fp16 autocast (GPU)."),
    shard_size: int = typer.Option(64, min=1, help="Images per shard (new archives)."),
    batch_size: int = typer.Option(8, min=1, help="Images per forward pass (same size)."),
    read_retries: int = typer.Option(2, min=0, help="Retries of a failed input read."),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1, max=HARD_MAX_PIXELS,
        help="Store images with more pixels than this (width x height) as failed records "
             f"(default {DEFAULT_MAX_PIXELS}, sized for 24 GB of RAM)."),
    shard_attempts: int = typer.Option(3, min=1, help="Attempts per shard (actor deaths)."),
    tier: Annotated[list[str] | None, typer.Option(
        "--tier", help="Set a tier: NAME:steps=N,gamma=G,seed=S (repeatable).")] = None,
    retry_failed: bool = typer.Option(
        False, help="Re-encode the failed images (the other records are kept)."),
    update: bool = typer.Option(
        False, help="Re-encode archived photos whose source file changed since (by its "
                    "modification time); without it they are only reported."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Say what a run would do (new, changed, failed images, "
                                 "shards); write nothing, start no Ray."),
    takeover: bool = typer.Option(False, help="Take over shard claims that look alive."),
    metadata: str = typer.Option(
        "keep", help="Capture metadata (EXIF date, camera, exposure, GPS) stored with each "
                     "image: keep, no-gps (drop the location), none."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                            help="Progress bar (default: on a terminal)."),
) -> None:
    """Compress a collection into a chunked archive on Ray (resumable, idempotent)."""
    from jobs.archive_summary import summary_rows
    from jobs.cluster import ClusterError
    from jobs.encode import ArchiveJobConfig, JobError, run_archive_job
    from pipeline.archive import EncodeOptions
    from pipeline.archive.tier_settings import TierError

    cfg = ArchiveJobConfig(
        src=src, url=archive_url, model=model, rate=rate, psnr=psnr, address=address,
        num_cpus=num_cpus,
        actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
        precision=precision, shard_size=shard_size,
        options=EncodeOptions(batch_size=batch_size, read_retries=read_retries,
                              max_pixels=max_pixels, metadata=metadata_policy(metadata)),
        tiers=list(tier or []), shard_attempts=shard_attempts, retry_failed=retry_failed,
        update=update, dry_run=dry_run, takeover=takeover, progress=progress)
    try:
        summary = run_archive_job(cfg)
    except TierError as e:
        _fail(f"{archive_url}: {e}", EXIT_USAGE, archive_url)
    except JobError as e:
        _fail(str(e), EXIT_INPUT, src, archive_url)
    except ClusterError as e:
        _fail(str(e), EXIT_INPUT)
    if dry_run:
        _finish_dry_run(summary, src, archive_url, as_json)
        return
    _remember_model(model, summary)
    if not as_json:
        _archive_warnings(summary, src)
    _finish(summary, f"cdc archive {src} -> {archive_url}", summary_rows, as_json)


def _finish_dry_run(summary: dict, src: str, archive_url: str, as_json: bool) -> None:
    """The plan's table (or JSON), then a warning per input that could not be archived."""
    from jobs.archive_summary import dry_run_rows

    _finish({**summary, "complete": True}, f"cdc archive --dry-run {src} -> {archive_url}",
            dry_run_rows, as_json)
    for f in summary["failures"][:20]:
        typer.echo(f"warning: {error_line(f['error'], f['key'])} (would not be archived)",
                   err=True)


def _archive_warnings(summary: dict, src: str) -> None:
    """What the job left alone: files that are not images, photos edited since archived."""
    if summary.get("not_images", {}).get("files"):
        from jobs.archive_summary import not_images_text

        typer.echo(f"warning: {printable(src)}: files that are not images were not archived: "
                   f"{not_images_text(summary['not_images'])}", err=True)
    same = summary.get("same_bytes", {})
    if same.get("images"):
        ex = same["example"]
        typer.echo(f"warning: {printable(src)}: {same['images']} photo(s) have the same bytes "
                   f"as another of this run (e.g. {printable(ex[1])} = {printable(ex[0])}); "
                   "each was archived: `cdc ls --duplicates` lists the copies", err=True)
    changed = summary.get("changed_sources", {})
    if changed.get("keys") and not changed.get("updated"):
        n = len(changed["keys"])
        typer.echo(f"warning: {printable(src)}: {n} archived photo(s) changed at the source "
                   f"since, kept as archived (--update re-encodes them), e.g. "
                   f"{printable(changed['keys'][0])}", err=True)


def get_cmd(
    archive_url: str = typer.Argument(..., help="Archive path or fsspec URL."),
    key: str = typer.Argument(..., help="Record key (`cdc ls` lists them)."),
    out_arg: str = typer.Argument(..., metavar="OUT",
                                  help="Output image (.png, .webp, .jpg, ...)."),
    tier: str = typer.Option("standard", help="Quality tier (archive attributes)."),
    steps: int | None = typer.Option(None, help="Override the tier's DDIM steps."),
    gamma: float | None = typer.Option(None, help="Override the tier's start noise."),
    seed: int | None = typer.Option(None, help="Override the tier's seed."),
    bpp: float | None = typer.Option(
        None, help="Progressive codecs (DiffC): decode the longest prefix within this many "
                   "bits per pixel (only that prefix is read)."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Weights (default: the archive's model, if shipped)."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Use the local disk cache."),
    cache_dir: Annotated[Path | None, typer.Option(
        help="Cache folder ($CDC_CACHE_DIR).")] = None,
    write_cache: bool = typer.Option(False, help="Also store the image in the archive's cache."),
    budget: str | None = typer.Option(None, "--decode-budget", metavar="LIMITS",
                                      help=_BUDGET_HELP),
    metadata: str = typer.Option("keep", help=_METADATA_HELP),
) -> None:
    """Decode one image of an archive at a quality tier (cached)."""
    out = Path(out_arg)
    limits = _budget_fields(budget)
    policy = metadata_policy(metadata)
    from cdc import WeightsError
    from jobs.models import budget_of, load_decoding_codec
    from pipeline.archive import DecodeError, FailedRecordError, Reader, resolve_model
    from pipeline.archive.decoded_lru import DiskLRU
    from pipeline.archive.outputs import restore_file_time, stored_metadata
    from pipeline.archive.tier_settings import TierError
    from pipeline.files import InputError, image_format_for, write_bytes_atomic
    from pipeline.photo_metadata import MetadataError, embed
    from storage import Archive, ArchiveError

    try:
        fmt = image_format_for(out)
    except InputError as e:
        _fail(str(e), EXIT_INPUT, out)
    try:
        arch = Archive.open(archive_url, read_only=not write_cache)
        codec = load_decoding_codec(resolve_model(arch, model), device=device)
        codec.with_budget(budget_of(limits))
        reader = Reader(arch, codec, cache=DiskLRU(cache_dir) if cache else None,
                        write_archive_cache=write_cache)
        res = reader.get(key, tier, fmt=fmt, steps=steps, gamma=gamma, seed=seed, bpp=bpp)
        try:
            meta = stored_metadata(arch, key, policy)
        except (ArchiveError, MetadataError) as e:
            _fail(f"{e} (--metadata none writes the image without it)", EXIT_INPUT,
                  archive_url, key)
        write_bytes_atomic(out, embed(res.data, fmt, meta))
        restore_file_time(out, meta)
    except TierError as e:
        _fail(f"{archive_url}: {e}", EXIT_USAGE, archive_url)
    except DecodeError as e:
        _fail(str(e), EXIT_STREAM, archive_url, key)
    except (ArchiveError, FailedRecordError, WeightsError, InputError, OSError) as e:
        _fail(str(e), EXIT_INPUT, archive_url, key, out)
    settings, _ = reader.settings(tier, steps=steps, gamma=gamma, seed=seed, bpp=bpp)
    how = "from cache" if res.source != "decoded" else f"decoded in {res.seconds:.2f} s"
    budget_note = (f", prefix within {settings.extra['bpp']:g} bpp"
                   if "bpp" in settings.extra else "")
    typer.echo(f"{printable(key)} -> {printable(out)}: {res.width}x{res.height}, tier {tier} "
               f"(steps {settings.steps}, gamma {settings.gamma}, seed {settings.seed}"
               f"{budget_note}), {how}")

def export_cmd(
    archive_url: str = typer.Argument(..., help="Archive path or fsspec URL."),
    dest: str = typer.Argument(..., help="Output folder (or fsspec URL)."),
    tier: str = typer.Option("standard", help="Quality tier."),
    fmt: str = typer.Option("png", "--format", help="png, webp or jpeg."),
    steps: int | None = typer.Option(None, help="Override the tier's DDIM steps."),
    gamma: float | None = typer.Option(None, help="Override the tier's start noise."),
    seed: int | None = typer.Option(None, help="Override the tier's seed."),
    prefix: str | None = typer.Option(None, help="Only keys starting with this."),
    keys: Annotated[Path | None, typer.Option(
        help="File listing the keys to export (- reads them from standard input).")] = None,
    taken_from: str | None = typer.Option(
        None, help="Only photos taken on or after this date (YYYY, YYYY-MM or YYYY-MM-DD)."),
    taken_to: str | None = typer.Option(
        None, help="Only photos taken on or before this date (YYYY, YYYY-MM or YYYY-MM-DD)."),
    overwrite: bool = typer.Option(False, help="Re-decode outputs that already exist."),
    model: str | None = typer.Option(None, "--model", "-m",
                                        help="Weights (default: the archive's model)."),
    address: str | None = typer.Option(None, help=_ADDRESS_HELP),
    num_cpus: int | None = typer.Option(None, help="CPUs of the local Ray."),
    actors: int | None = typer.Option(None, help="Decoder actors."),
    cpus_per_actor: float = typer.Option(1.0, help="CPUs per actor."),
    gpus_per_actor: float | None = typer.Option(None, help="GPUs per actor."),
    batch_size: int = typer.Option(8, min=1, help="Streams decoded together."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Use the local disk cache."),
    cache_dir: str | None = typer.Option(None, help="Cache folder ($CDC_CACHE_DIR)."),
    write_cache: bool = typer.Option(False, help="Also store images in the archive's cache."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
    budget: str | None = typer.Option(None, "--decode-budget", metavar="LIMITS",
                                      help=_BUDGET_HELP),
    metadata: str = typer.Option("keep", help=_METADATA_HELP),
) -> None:
    """Decode many images of an archive at a tier on Ray (skips existing outputs)."""
    from jobs.cluster import ClusterError
    from jobs.contents_cli import keys_taken_between, read_key_list
    from jobs.encode import JobError
    from jobs.export import ExportJobConfig, run_export_job, summary_rows

    key_list = None if keys is None else read_key_list(keys)
    if taken_from is not None or taken_to is not None:  # the photos of those dates only
        dated = keys_taken_between(archive_url, taken_from, taken_to, prefix or "")
        if key_list is not None:
            wanted = set(dated)
            dated = [k for k in key_list if k in wanted]
        key_list = dated
    cfg = ExportJobConfig(
        url=archive_url, dest=dest, tier=tier, fmt=fmt, steps=steps, gamma=gamma, seed=seed,
        model=model, keys=key_list, prefix=prefix, overwrite=overwrite, address=address,
        num_cpus=num_cpus, actors=actors, cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor, batch_size=batch_size, cache=cache,
        cache_dir=cache_dir, write_cache=write_cache, progress=progress,
        decode_budget=_budget_fields(budget), metadata=metadata_policy(metadata))
    try:
        summary = run_export_job(cfg)
    except JobError as e:
        code = EXIT_USAGE if "tier" in str(e) or "format" in str(e) else EXIT_INPUT
        _fail(str(e) if str(e).startswith(archive_url) else f"{archive_url}: {e}", code,
              archive_url)
    except ClusterError as e:
        _fail(str(e), EXIT_INPUT)
    _finish(summary, f"cdc export {archive_url} -> {dest}", summary_rows, as_json)

def serve_cmd(
    archive_url: str = typer.Argument(..., help="Archive path or fsspec URL."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (default loopback only)."),
    port: int = typer.Option(8000, help="HTTP port."),
    model: str | None = typer.Option(None, "--model", "-m",
                                        help="Weights (default: the archive's model)."),
    tier: str = typer.Option("standard", help="Tier when a request names none."),
    address: str | None = typer.Option(None, help=_ADDRESS_HELP),
    num_cpus: int | None = typer.Option(None, help="CPUs of the local Ray."),
    replicas: int = typer.Option(1, min=1, help="Decoder replicas."),
    gpus_per_replica: float = typer.Option(0.0, help="GPUs per replica (1 if Ray sees GPUs)."),
    max_batch_size: int = typer.Option(8, min=1, help="Decodes batched per GPU pass."),
    batch_wait_ms: float = typer.Option(20.0, min=0, help="How long a batch collects."),
    max_pending: int = typer.Option(32, min=1, help="Decodes waiting per replica, then 429."),
    max_ongoing: int = typer.Option(64, min=1, help="Requests per replica."),
    max_queued: int = typer.Option(128, min=1, help="Queued requests, then 503."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Use the local disk cache."),
    cache_dir: str | None = typer.Option(None, help="Cache folder ($CDC_CACHE_DIR)."),
    write_cache: bool = typer.Option(False, help="Also store images in the archive's cache."),
    budget: str | None = typer.Option(None, "--decode-budget", metavar="LIMITS",
                                      help=_BUDGET_HELP),
) -> None:
    """Serve an archive over HTTP (Ray Serve): a gallery page at /, and
    GET /images/{key}?tier=&format=&width=."""
    from cdc import WeightsError
    from jobs.cluster import ClusterError
    from pipeline.archive.tier_settings import TierError
    from storage import ArchiveError

    _check_servable(archive_url, model, tier)  # before Ray and Serve start (seconds)
    from jobs.serve import ServeOptions, run_server

    opts = ServeOptions(default_tier=tier, max_batch_size=max_batch_size,
                        batch_wait_s=batch_wait_ms / 1000, max_pending=max_pending,
                        max_ongoing=max_ongoing, max_queued=max_queued, replicas=replicas,
                        num_gpus=gpus_per_replica, cache=cache, cache_dir=cache_dir,
                        write_cache=write_cache, decode_budget=_budget_fields(budget))

    def ready(url: str) -> None:
        typer.echo(f"serving {printable(archive_url)} on {url}: the gallery at {url}/, "
                   "GET /images, /images/{key}?tier=, /info, /healthz; Ctrl-C stops", err=True)

    try:
        run_server(archive_url, model=model, opts=opts, host=host, port=port,
                   address=address, num_cpus=num_cpus, on_ready=ready)
    except TierError as e:
        _fail(str(e), EXIT_USAGE, archive_url)
    except (ArchiveError, WeightsError) as e:
        _fail(str(e), EXIT_INPUT, archive_url)
    except ClusterError as e:
        _fail(str(e), EXIT_INPUT)


def register(app: typer.Typer) -> None:
    """Add ``archive``, ``get``, ``export`` and ``serve`` to ``app`` (once; idempotent)."""
    if getattr(app, "_cdc_ray_commands", False):
        return
    app._cdc_ray_commands = True  # type: ignore[attr-defined]
    for name, command in (("archive", archive_cmd), ("get", get_cmd), ("export", export_cmd),
                          ("serve", serve_cmd)):
        app.command(name)(command)


def _remember_model(model: str, summary: dict) -> None:
    """A non-shipped model an archive was written with goes into the local model cache, so
    ``cdc get``/``export``/``serve`` find it without ``--model`` (zoo.cache)."""
    from zoo import registry
    from zoo.cache import remember

    digest = (summary.get("model") or {}).get("weights_digest", "")
    if model and model not in registry() and digest:
        remember(digest, model)


def _check_servable(archive_url: str, model: str | None, tier: str) -> None:
    """Fail (one line, exit 1/2) unless ``archive_url`` opens as an archive, has a model to
    decode it with and has ``tier``: what ``cdc serve`` checks before starting Ray."""
    from pipeline.archive import resolve_model
    from storage import Archive, ArchiveError

    try:
        arch = Archive.open(archive_url, read_only=True)
        resolve_model(arch, model)
    except (ArchiveError, OSError) as e:
        _fail(str(e) if str(e).startswith(archive_url) else f"{archive_url}: {e}", EXIT_INPUT,
              archive_url)
    if tier not in arch.tiers:
        _fail(f"{archive_url}: no tier {tier!r} (tiers: {', '.join(sorted(arch.tiers))})",
              EXIT_USAGE, archive_url)


__all__ = ["archive_cmd", "export_cmd", "get_cmd", "register", "serve_cmd"]
