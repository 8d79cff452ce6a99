"""``cdc eval``: our codecs at several models/decode settings vs classical codecs at matched bpp.

The heavy lifting is :func:`pipeline.evaluation.runner.run_evaluation`; this module only turns
command-line choices into *entries*: one per (model, steps, gamma) of our codecs, plus,
for each classical codec, one entry per model that hits that model's bpp image by image
(so every family gets points at the same rates), and optional fixed-quality sweeps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from jobs.text import fail as _fail
from zoo.store import default_model

EXIT_INPUT, EXIT_USAGE = 1, 2
DEFAULT_METRICS = "psnr,ms_ssim,lpips_alex,lpips_vgg,dists,fid"


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"--{what}: expected comma-separated numbers, got {text!r}", EXIT_USAGE)
        raise  # unreachable


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    try:
        kn = (int(k), int(n))
    except ValueError:
        kn = (-1, 0)
    if not sep or kn[1] < 1 or not 0 <= kn[0] < kn[1]:
        _fail(f"--shard: expected K/N with 0 <= K < N, got {text!r}", EXIT_USAGE)
    return kn


def codec_entries(codec, steps: list[int], gammas: list[float], seed: int = 0,
                  prefix_bpps: list[float] | None = None, ladder: bool = False) -> list:
    """One entry per decode setting; the stream is encoded once per image and reused.

    ``ladder``: several models of one codec make one curve per decode setting (the rate
    ladder), so their families name the setting, not the model.

    For a progressive codec (DiffC) and ``prefix_bpps``, one entry per budget too: its
    "stream" is the prefix a reader with that budget would fetch, so bpp counts only the
    bytes read, and the decode sees nothing else.
    """
    from pipeline.evaluation.runner import CallableEntry

    cache: dict[int, bytes] = {}

    def encode(img):
        key = id(img)
        if key not in cache:
            cache.clear()  # one image at a time: the runner evaluates entries image by image
            cache[key] = codec.compress(img)
        return cache[key]

    def decode(data, s, g):
        return codec.decompress(data, steps=s, gamma=g, seed=seed)

    entries = []
    budgets: list[float | None] = [None]
    if prefix_bpps and getattr(codec, "progressive", False):
        budgets += sorted(prefix_bpps)
    for s in steps:
        for g in gammas:
            family = (f"{codec.codec_id.upper()} ladder (s{s}, γ={g:g})" if ladder
                      else f"{codec.codec_id.upper()} ({codec.model_id}, γ={g:g})")
            for b in budgets:
                if b is None:
                    entries.append(CallableEntry(f"{codec.model_id} s{s} g{g:g}", encode,
                                                 lambda d, s=s, g=g: decode(d, s, g), family))
                    continue

                def prefix(img, b=b):
                    full = encode(img)
                    return full[: codec.prefix_length(full, bpp=b)]

                entries.append(CallableEntry(f"{codec.model_id} s{s} g{g:g} @{b:g}bpp", prefix,
                                             lambda d, s=s, g=g: decode(d, s, g), family))
    return entries


def rate_entries(codec, rates: list[float], tiers: dict[str, dict], seed: int = 0) -> list:
    """A rate-controlled codec (refine) at each target rate × each tier: one stream per
    (image, rate), decoded at every tier; one curve (family) per tier across the rates."""
    from pipeline.evaluation.runner import CallableEntry

    cache: dict[tuple[int, float], bytes] = {}

    def encode(img, rate):
        key = (id(img), rate)
        if key not in cache:
            if not any(k[0] == id(img) for k in cache):
                cache.clear()  # the runner evaluates entries image by image
            cache[key] = codec.with_rate(rate).compress(img)
        return cache[key]

    entries = []
    for rate in rates:
        for name, t in tiers.items():
            steps, g = int(t["steps"]), float(t.get("gamma", 0.0))
            entries.append(CallableEntry(
                f"{codec.model_id} {rate:g}bpp {name}", lambda img, r=rate: encode(img, r),
                lambda d, s=steps, g=g: codec.decompress(d, steps=s, gamma=g, seed=seed),
                f"{codec.model_id} {name}"))
    return entries


def _sweeps(sweep: str) -> dict[str, list[int]]:
    """``--sweep 'jpeg:10,30;webp:20'`` → codec → qualities."""
    sweeps: dict[str, list[int]] = {}
    for part in filter(None, (p.strip() for p in sweep.split(";"))):
        name, _, qs = part.partition(":")
        sweeps[name.strip()] = [int(v) for v in _floats(qs, "sweep")]
    return sweeps


def _images(images: str, limit: int | None) -> list:
    """The (name, image) pairs to evaluate (the first ``limit``); one line and exit 1 if none."""
    from pipeline.evaluation.runner import load_images

    try:
        imgs = load_images(images)
    except (OSError, ValueError) as e:
        _fail(f"{images}: {e}", EXIT_INPUT, images)
    if not imgs:
        _fail(f"{images}: no images found", EXIT_INPUT, images)
    return imgs[:limit] if limit else imgs


def _model_entries(model: list[str], device: str, rates: str, classical: str,
                   step_list: list[int], gammas: list[float], seed: int, prefix_bpp: str
                   ) -> list:
    """The entries of ``--model``s: each model's decode settings (or, with ``--rates``, its
    target rates), each followed by the classical codecs matched to its bytes."""
    from cdc.errors import WeightsError
    from pipeline.archive import match_tiers
    from pipeline.evaluation.runner import matched_bpp_entries
    from zoo import load_codec

    entries = []
    for m in model:
        try:
            codec = load_codec(m, device=device)
        except WeightsError as e:
            _fail(str(e))
        if rates:
            from cdc.interface import RateControlled

            if not isinstance(codec, RateControlled):
                _fail(f"--rates: {m} is not rate-controlled (its rate is fixed; use "
                      "several models)", EXIT_USAGE)
            tiers = codec.recommended_tiers() or {}
            match_tiers(codec, tiers)
            ours = rate_entries(codec, _floats(rates, "rates"), tiers, seed)
            entries += ours
            names = [c.strip() for c in classical.split(",") if c.strip()]
            if names:  # classical codecs at the bytes of each rate's stream
                refs = [e.name for e in ours if e.name.endswith(" " + next(iter(tiers)))]
                entries += matched_bpp_entries(refs, names)
            continue
        s = step_list or [codec.config.default_steps if hasattr(codec, "config") else 1]
        # CorrDiff: the encoder simulates (and stores weights for) every evaluated
        # decode setting, as an archive does for its tiers (a no-op for other codecs)
        match_tiers(codec, {f"s{st}g{g:g}": {"steps": st, "gamma": g, "seed": seed}
                            for st in s for g in gammas})
        ours = codec_entries(codec, s, gammas, seed,
                             _floats(prefix_bpp, "prefix-bpp") if prefix_bpp else None,
                             ladder=len(model) > 1)
        entries += ours
        names = [c.strip() for c in classical.split(",") if c.strip()]
        if names:
            # A progressive stream is matched at every prefix budget of its first
            # decode setting too (each budget is a rate of its own).
            first = ours[0].name
            refs = [first] + [e.name for e in ours if e.name.startswith(first + " @")]
            entries += matched_bpp_entries(refs, names)
    return entries


def eval_cmd(
    images: str = typer.Argument(..., help="Folder, glob, list file or fsspec URL of images."),
    out: Path = typer.Argument(..., help="Output folder: per_image.csv, summary.json, plots."),
    model: list[str] = typer.Option([default_model()], "--model", "-m",
                                    help="Model name/path/URL; repeat for several rates."),
    steps: str = typer.Option("", help="Decode steps, comma-separated (default: model's)."),
    gamma: str = typer.Option("0", help="Start-noise scales γ, comma-separated."),
    seed: int = typer.Option(0, help="Decode seed."),
    classical: str = typer.Option(
        "jpeg,webp,avif,heic,jxl",
        help="Classical codecs matched to each model's bpp ('' for none).",
    ),
    sweep: str = typer.Option("", help="Fixed-quality sweeps, e.g. 'jpeg:10,30,50;webp:20,50'."),
    metrics: str = typer.Option(DEFAULT_METRICS, help="Comma-separated metrics."),
    device: str = typer.Option("cpu", "--device"),
    limit: int | None = typer.Option(None, help="Only the first N images (sorted)."),
    save_decoded: bool = typer.Option(False, help="Also write the decoded PNGs."),
    prefix_bpp: str = typer.Option("", help="Progressive codecs (DiffC): also decode prefixes "
                                            "within these bpp budgets, e.g. 0.25,0.5,1."),
    bd_anchor: str = typer.Option("AVIF", help="Family the BD-rates are measured against."),
    rates: str = typer.Option("", help="Rate-controlled codecs (refine): target bpps, "
                                       "e.g. 0.03,0.06,0.12,0.25,0.5; every tier of the "
                                       "model is decoded at each."),
    panels: bool = typer.Option(False, help="Also write visual panels (original | AVIF | "
                                            "ours per tier, same bytes, 2x crops) into "
                                            "OUT/panels/."),
    fresh: bool = typer.Option(False, help="Start over: ignore the images a stopped run "
                                           "of the same evaluation kept in OUT/.progress."),
    shard: str = typer.Option("", help="K/N: evaluate every N-th image from the K-th "
                                       "(0-based) into the shared OUT; the run that finds "
                                       "all images done writes the summary."),
) -> None:
    """Rate–distortion/perception evaluation vs classical codecs (CSV, JSON, plots)."""
    from pipeline.evaluation.runner import (
        METRICS,
        add_bd_rates,
        classical_entries,
        run_evaluation,
        summary_table,
    )
    from pipeline.metrics import MetricWeightsMissing

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    wanted = [m.strip() for m in metrics.split(",") if m.strip()]
    bad = set(wanted) - set(METRICS)
    if bad:
        _fail(f"--metrics: unknown {sorted(bad)}; known: {', '.join(METRICS)}", EXIT_USAGE)
    shard_kn = _shard(shard) if shard else None
    if shard_kn and fresh:
        _fail("--fresh and --shard: a shard must not discard the other shards' images",
              EXIT_USAGE)
    gammas = _floats(gamma, "gamma")
    step_list = [int(v) for v in _floats(steps, "steps")] if steps else []
    sweeps = _sweeps(sweep)
    imgs = _images(images, limit)
    entries = _model_entries(model, device, rates, classical, step_list, gammas, seed,
                             prefix_bpp)
    entries += classical_entries(sweeps) if sweeps else []
    try:
        summary = run_evaluation(imgs, entries, out, metrics=wanted, device=device,
                                 save_decoded=save_decoded or panels, resume=not fresh,
                                 shard=shard_kn)
    except MetricWeightsMissing as e:
        _fail(str(e))
    if "missing" in summary:
        typer.echo(f"shard {shard}: done; {len(summary['missing'])} of {summary['images']} "
                   f"images belong to shards not finished yet: run `cdc eval` again "
                   f"(same arguments) when they are, to write the summary into {out}/")
        return
    typer.echo(summary_table(summary))
    for line in add_bd_rates(summary, out, anchor=bd_anchor):
        typer.echo(line)
    if panels:
        from pipeline.evaluation.panels import write_panels

        typer.echo(f"{len(write_panels(out, images))} visual panels in {out}/panels/")
    typer.echo(f"per-image CSV, summary.json and plots in {out}/")

def eval_merge_cmd(
    out: Path = typer.Argument(..., help="Output folder (may be one of the sources)."),
    sources: list[Path] = typer.Argument(..., help="Finished `cdc eval` folders, oldest "
                                                   "first: a later one's entries replace "
                                                   "the same-named entries of earlier ones."),
    bd_anchor: str = typer.Option("AVIF", help="Family the BD-rates are measured against."),
) -> None:
    """Join evaluations of the same images (re-measured rungs, kept others) into one."""
    from pipeline.evaluation.merge import MergeError, merge_evaluations
    from pipeline.evaluation.runner import add_bd_rates, summary_table

    try:
        summary = merge_evaluations(sources, out)
    except MergeError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{out}: cannot write the merged evaluation ({e.strerror or e})", EXIT_INPUT, out)
    typer.echo(summary_table(summary))
    for line in add_bd_rates(summary, out, anchor=bd_anchor):
        typer.echo(line)
    typer.echo(f"merged per-image CSV, summary.json and plots in {out}/")


def register(app: typer.Typer) -> None:
    """Add ``eval`` and ``eval-merge`` to ``app``."""
    app.command("eval")(eval_cmd)
    app.command("eval-merge")(eval_merge_cmd)
