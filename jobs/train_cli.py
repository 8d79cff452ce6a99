"""`cdc train` and `cdc export-model`: the same two commands for every codec.

``train`` reads the config's ``codec`` (a family config's rung: ``FILE#RUNG`` or ``--rung``)
and calls that codec's ``run_training`` (:func:`pipeline.training.trainer.training_entry`);
``export-model`` reads the run's codec and calls its exporter, refusing an option the
exporter does not honour, and printing an exporter's ``ValueError`` (e.g. over a size
limit) as one line, exit 1, as every ``cdc`` command does.
"""

from __future__ import annotations

from pathlib import Path

import typer

from jobs.text import fail

EXIT_INPUT, EXIT_USAGE = 1, 2  # as in jobs.cli (README: 1 input, 2 usage)
DeviceOpt = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda.")


def train(
    config: str = typer.Argument(..., help="Training config (YAML, see configs/); FILE#RUNG "
                                 "picks one rung of a family config."),
    run_dir: Path = typer.Option(..., "--run-dir",
                                 help="Checkpoint + metrics folder (resumes if present)."),
    rung: str | None = typer.Option(None, help="The rung of a family config (same as FILE#RUNG)."),
    device: str = DeviceOpt,
    bf16: bool = typer.Option(False, help="bf16 autocast (GPU)."),
    batch_size: int | None = typer.Option(None, help="Override the config's batch size."),
    max_steps: int | None = typer.Option(None, help="Stop after this many more steps."),
    time_limit: float | None = typer.Option(None, help="Stop (and checkpoint) after this many "
                                            "seconds."),
    export: str | None = typer.Option(None, help="After training, export under this model name."),
    half: bool = typer.Option(False, help="Export network weights as fp16."),
) -> None:
    """Train (or resume) a model (any codec: the config's `codec`); optionally export it."""
    import yaml

    from cdc.registry import CODECS, codec_of, entry, resolve
    from pipeline.training.training_config import read_config, split_rung

    if rung and split_rung(config)[1]:
        fail(f"{config}: give the rung once (FILE#RUNG or --rung)", EXIT_USAGE, config)
    config = f"{config}#{rung}" if rung else config
    try:
        codec = codec_of(read_config(config))
    except (OSError, yaml.YAMLError, AttributeError, ValueError) as e:
        fail(str(e) if split_rung(config)[0].as_posix() in str(e) else f"{config}: {e}",
             EXIT_INPUT, config)
    if codec not in CODECS:
        fail(f"{config}: unknown codec {codec!r}; known: {', '.join(CODECS)}", EXIT_USAGE,
             config)
    if not entry(codec).trainer:
        fail(f"{config}: codec {codec!r} has no trainer (nothing to train)", EXIT_USAGE, config)
    module = resolve(entry(codec).trainer)  # every codec's trainer has the same entry point
    try:
        line = module.run_training(config, run_dir, device=device, bf16=bf16,
                                   batch_size=batch_size, max_steps=max_steps,
                                   time_limit=time_limit, export=export, half=half)
    except (OSError, ValueError, TypeError) as e:
        fail(f"{config}: {e}", EXIT_INPUT, config)
    typer.echo(line)


def export_model_cmd(
    run_dir: Path = typer.Argument(..., help="A training run folder."),
    name: str | None = typer.Option(None, help="Model name in the zoo (default: the config's "
                                    "zoo_name, else its model_id)."),
    zoo_dir: Path | None = typer.Option(None, help="Zoo folder (default: the installed cdc/zoo)."),
    half: bool = typer.Option(False, help="Store network weights as fp16."),
    description: str = typer.Option("", help="One line for the registry."),
    default_steps: int | None = typer.Option(None, help="Decode steps when none are asked for."),
    default_gamma: float | None = typer.Option(None, help="Start-noise scale when none is "
                                               "asked for."),
    tier: list[str] = typer.Option([], "--tier", help="Recommended tier for new archives, "
                                   "NAME:steps=N,gamma=G,seed=S."),
    family: str | None = typer.Option(None, help="Rate family (ladder) in the registry: "
                                      "`--rate` chooses among a family's models."),
) -> None:
    """Export a run's EMA weights (any codec: the run's own) with sha256 into the model zoo."""
    from cdc.registry import CODECS, entry, resolve
    from pipeline.archive.tier_settings import DEFAULT_TIERS, TierError, merge_tiers
    from pipeline.training.trainer import load_checkpoint_config, unsupported_options

    try:
        _, codec = load_checkpoint_config(run_dir)
    except FileNotFoundError:
        fail(f"{run_dir}: no checkpoint.pt", EXIT_INPUT, run_dir)
    except (OSError, KeyError) as e:
        fail(f"{run_dir}: unreadable checkpoint ({e})", EXIT_INPUT, run_dir)
    if codec not in CODECS:
        fail(f"{run_dir}: checkpoint of unknown codec {codec!r}", EXIT_USAGE, run_dir)
    if not entry(codec).trainer:
        fail(f"{run_dir}: codec {codec!r} has no exporter (nothing to train)", EXIT_USAGE,
             run_dir)
    defaults = {k: v for k, v in (("default_steps", default_steps),
                                  ("default_gamma", default_gamma)) if v is not None}
    try:
        tiers = merge_tiers(DEFAULT_TIERS, tier) if tier else None
    except TierError as e:
        fail(str(e), EXIT_USAGE)
    exporter = resolve(entry(codec).trainer).export
    given = {"--zoo-dir": zoo_dir is not None, "--half": half, "--description": description,
             "--default-steps": default_steps is not None, "--tier": tier,
             "--default-gamma": default_gamma is not None}
    refused = unsupported_options(exporter, [o for o, used in given.items() if used])
    if refused:
        fail(f"{refused[0]}: the {codec} exporter does not support it; leave it out",
             EXIT_USAGE, run_dir)
    try:
        path = exporter(run_dir, name, zoo_dir=zoo_dir, half=half, description=description,
                        decode_defaults=defaults, tiers=tiers)
    except (ValueError, OSError) as e:  # e.g. over a codec's size limit: one line, no trace
        fail(f"{run_dir}: cannot export: {e}", EXIT_INPUT, run_dir)
    name = Path(path).stem  # the name it was shipped under (the config's, unless --name)
    if family:
        from zoo.store import update_entry

        update_entry(name, {"family": family}, zoo_dir)
    typer.echo(f"exported {name} -> {path}")


def export_onnx_cmd(
    name: str = typer.Argument(..., help="A shipped TAEF2-latent refine model."),
    zoo_dir: Path | None = typer.Option(None, help="Zoo folder (default: the installed zoo)."),
) -> None:
    """Write a shipped refine model's ONNX graphs (the torch-free decoder of `cdc decompress`)."""
    from cdc import WeightsError
    from zoo.onnx_graphs import write_onnx

    try:
        field = write_onnx(name, zoo_dir)
    except ImportError as e:
        fail(f"{name}: exporting ONNX graphs needs the onnx package ({e})", EXIT_USAGE, name)
    except (WeightsError, KeyError, ValueError, OSError) as e:
        fail(f"{name}: cannot export ONNX graphs: {e}", EXIT_INPUT, name)
    typer.echo(f"{name}: ONNX graphs -> {field['file']} (sha256 {field['sha256'][:16]}…)")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``export-model`` and ``export-onnx`` to ``app``."""
    app.command()(train)
    app.command("export-model")(export_model_cmd)
    app.command("export-onnx")(export_onnx_cmd)
