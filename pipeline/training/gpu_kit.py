"""Get a refine training run onto a lent GPU machine: what must travel, in 64 MiB.

A lent machine (the ``device`` tool) gets a copy of this checkout — tracked files and
untracked files git does not ignore — plus paths named in ``carry``, **64 MiB in all**, and
reaches no package index. Our tracked tree is ≈ 160 MB (the legacy models' weights, docs'
pictures, relays), the training photos 145 MB, the LPIPS-VGG trunk 59 MB. So a GPU session
runs, in this checkout:

    python -m pipeline.training.gpu_kit trim    # untrack what training does not read
    python -m pipeline.training.gpu_kit pack    # .gpu-kit/: photos, wheels, int8 VGG, relay
    (device run: carry [".gpu-kit"], command in docs/gpu-training.md)
    python -m pipeline.training.gpu_kit restore # the index as it was; no file was touched

``trim`` takes the heavy tracked paths out of git's index (``git rm --cached``) and ignores
them (a marked block in ``.git/info/exclude``), so they neither count as tracked nor as
untracked; the files stay on disk and ``restore`` puts the index entries back from HEAD.
It refuses to start with staged changes, so nothing else can be committed by mistake.

What ``pack`` writes (``.gpu-kit/``, itself ignored):

* ``photos/``: training photos (never the validation split), the original files, in a fixed
  order (sha1 of their split name), as many as fit the budget left by everything else;
* ``wheels/``: Pillow (our version: the same libavif makes the same bases) and ``lpips``
  (its linear layers), for the machine's Python 3.12;
* ``cache/metrics/vgg16-int8.pt``: the LPIPS-VGG trunk for the loss, int8 per channel
  (:mod:`pipeline.metrics.trunk_int8`; ``perceptual_trunk: int8`` in the GPU configs);
* ``init/refine-latent-3/``: the shipped v3 model's relay, from the history, for configs
  that go on from it;
* ``manifest.json``: every file's size and sha256, and the accounting of the 64 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

LIMIT = 64 << 20
KIT = Path(".gpu-kit")
#: Tracked paths a refine training run never reads (``trim`` untracks them).
TRIM = ("docs", "checkpoints", "samples", "tests", "bench", "zoo/weights/onnx",
        "zoo/weights/refine-avif.pt", "zoo/weights/lcdc-q1.pt",
        "zoo/weights/lcdc-q2.pt", "zoo/weights/lcdc-q3.pt", "zoo/weights/lcdc-q4.pt",
        "zoo/weights/cdc-small.pt", "zoo/weights/corrdiff-small.pt",
        "zoo/weights/diffc-small.pt", "zoo/weights/ldiffc-small.pt",
        "zoo/weights/lcorrdiff-q2.pt", "zoo/weights/refine-avif-v1.pt",
        "zoo/weights/refine-avif-v2.pt")
EXCLUDE_BEGIN, EXCLUDE_END = "# >>> gpu_kit trim", "# <<< gpu_kit trim"
#: The v3 relay (configs/refine-latent-3.yaml's run at 8,000 steps) in the history.
V3_RELAY = ("7c4d0fd", "checkpoints/refine-latent-3")
WHEELS = ("lpips==0.1.4",)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")
MARGIN = 1 << 20  # git metadata and file-system slack the tool may count


def _git(repo: Path, *args: str, text: bool = True) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                         text=text)
    return out.stdout


def _sizes(repo: Path, args: tuple[str, ...]) -> int:
    names = [n for n in _git(repo, *args, "-z").split("\0") if n]
    return sum((repo / n).stat().st_size for n in names if (repo / n).is_file())


def travelling_bytes(repo: Path) -> dict[str, int]:
    """What a device call would send without carry: tracked files (present on disk) and
    untracked files git does not ignore."""
    return {"tracked": _sizes(repo, ("ls-files",)),
            "untracked": _sizes(repo, ("ls-files", "--others", "--exclude-standard"))}


def _exclude_file(repo: Path) -> Path:
    return repo / _git(repo, "rev-parse", "--git-path", "info/exclude").strip()


def _set_exclude_block(repo: Path, lines: list[str]) -> None:
    path = _exclude_file(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text().splitlines() if path.exists() else []
    kept, inside = [], False
    for ln in old:
        if ln == EXCLUDE_BEGIN:
            inside = True
        elif ln == EXCLUDE_END:
            inside = False
        elif not inside:
            kept.append(ln)
    block = [EXCLUDE_BEGIN, *lines, EXCLUDE_END] if lines else []
    path.write_text("\n".join(kept + block) + "\n")


def trim(repo: Path, paths: tuple[str, ...] = TRIM) -> list[str]:
    """Untrack and ignore ``paths`` (files stay on disk); returns the untracked files."""
    staged = [ln.split("\t", 1) for ln in _git(repo, "diff", "--cached", "--name-status")
              .splitlines() if ln]
    if any(st != "D" or not _under(name, paths) for st, name in staged):  # not our own trim
        raise RuntimeError(f"{repo}: the index has staged changes; commit or unstage them "
                           "before trim (restore must put back exactly what HEAD has)")
    files = [n for n in _git(repo, "ls-files", "-z", "--", *paths).split("\0") if n]
    _set_exclude_block(repo, [f"/{p}" for p in paths])
    if files:
        _git(repo, "rm", "-r", "--cached", "-q", "--", *files)
    return files


def _under(name: str, paths: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p.rstrip("/") + "/") for p in paths)


def restore(repo: Path) -> None:
    """Put the trimmed index entries back from HEAD and drop the ignore block."""
    _set_exclude_block(repo, [])
    in_head = [p for p in TRIM if _git(repo, "ls-tree", "--name-only", "HEAD", "--", p).strip()]
    if in_head:
        _git(repo, "reset", "-q", "--", *in_head)


def _photo_order(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def training_photos(sources: list[str], split: str) -> list[tuple[str, Path]]:
    """(split name, path) of every training photo, validation split left out, in the fixed
    order the kit takes them."""
    from pipeline.sources import list_images
    from pipeline.training.refine_pairs import read_split, split_name

    exclude = read_split(split)
    found = [(split_name(u), Path(u)) for u in list_images(sources)]
    return sorted(((n, p) for n, p in found if n not in exclude),
                  key=lambda t: _photo_order(t[0]))


def device_command(repo: Path, seconds: int = 540) -> str:
    """The one device-call command (``carry: [".gpu-kit"]``, ``timeout_s: 600``): install the
    kit's wheels, then train every ``configs/gpu`` config side by side."""
    configs = " ".join(p.relative_to(repo).as_posix()
                       for p in sorted((repo / "configs" / "gpu").glob("*.yaml")))
    cmd = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
           "--upgrade --target /tmp/site .gpu-kit/wheels/*.whl && "
           "export PYTHONPATH=/tmp/site:$PWD && PYTHONUNBUFFERED=1 python3 -m "
           f'pipeline.training.gpu_run {configs} --out "$OUT" --seconds {seconds}')
    if len(cmd) > 2000:
        raise RuntimeError(f"the device command is {len(cmd)} characters, over 2000")
    return cmd


def _wheels(dest: Path) -> None:
    import PIL

    dest.mkdir(parents=True, exist_ok=True)
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", *plat, "-d", str(dest),
           f"pillow=={PIL.__version__}", *WHEELS]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"pip download of the wheels failed: {' '.join(tail)}")


def _v3_relay(repo: Path, dest: Path) -> None:
    rev, folder = V3_RELAY
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("relay.pt", "train_config.yaml"):
        data = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{folder}/{name}"],
                              check=True, capture_output=True).stdout
        (dest / name).write_bytes(data)


def _side(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return min(im.size)
    except OSError:
        return 0


def pack(repo: Path, sources: list[str], split: str, kit: Path = KIT,
         limit: int = LIMIT, wheels: bool = True, relay: bool = True,
         min_side: int = 128) -> dict:
    """Write the kit: everything but the photos first, then photos up to what is left of
    ``limit`` after the checkout as it travels now (trim first to leave them room); a photo
    smaller than ``min_side`` (the training crop) or unreadable is left out."""
    from pipeline.metrics.fetch import sha256_file
    from pipeline.metrics.trunk_int8 import write_int8

    kit = repo / kit
    if kit.exists():
        shutil.rmtree(kit)
    _set_kit_ignored(repo, kit)
    if wheels:
        _wheels(kit / "wheels")
    write_int8("vgg16", kit / "cache")  # from this machine's verified exact trunk
    if relay:
        _v3_relay(repo, kit / "init" / "refine-latent-3")
    tree = travelling_bytes(repo)
    used = sum(tree.values()) + _folder_bytes(kit) + MARGIN
    room = limit - used
    photos, taken = 0, 0
    for name, path in training_photos(sources, split):
        size = path.stat().st_size
        if taken + size > room or _side(path) < min_side:
            continue  # a smaller photo further on may still fit
        out = kit / "photos" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
        taken += size
        photos += 1
    if photos == 0:
        raise RuntimeError(f"no room for photos: the checkout sends {sum(tree.values())} "
                           "bytes (run trim first)")
    files = {str(p.relative_to(kit)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(kit.rglob("*")) if p.is_file() and "photos" not in p.parts}
    manifest = {"limit": limit, "tree": tree, "kit_bytes": _folder_bytes(kit),
                "photos": photos, "photo_bytes": taken, "files": files}
    manifest["total"] = sum(tree.values()) + manifest["kit_bytes"]
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _set_kit_ignored(repo: Path, kit: Path) -> None:
    path = _exclude_file(repo)
    line = f"/{kit.relative_to(repo).as_posix()}/"
    text = path.read_text() if path.exists() else ""
    if line not in text.splitlines():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + ("" if not text or text.endswith("\n") else "\n") + line + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.training.gpu_kit",
                                 description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="write .gpu-kit/ (photos up to the 64 MiB left)")
    p.add_argument("--sources", nargs="+", default=["../shared/data/train"])
    p.add_argument("--split", default="configs/validation-split.txt")
    p.add_argument("--limit-mib", type=float, default=64.0)
    sub.add_parser("trim", help="untrack and ignore what training does not read")
    sub.add_parser("restore", help="undo trim (the index from HEAD, the ignore block gone)")
    sub.add_parser("size", help="what a device call would send now, without carry")
    sub.add_parser("command", help="print the device call's command")
    args = ap.parse_args(argv)
    try:
        repo = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel").strip())
    except (OSError, subprocess.CalledProcessError):
        print(f"error: {Path.cwd()}: not inside a git checkout (run from the repository)",
              file=sys.stderr)
        return 1
    try:
        if args.cmd == "pack":
            m = pack(repo, args.sources, args.split, limit=int(args.limit_mib * (1 << 20)))
            print(f"kit: {m['photos']} photos ({m['photo_bytes'] / 2**20:.1f} MiB), "
                  f"{m['kit_bytes'] / 2**20:.1f} MiB in all; with the checkout "
                  f"{m['total'] / 2**20:.1f} MiB of {m['limit'] / 2**20:.0f}")
            print("device call: carry [\".gpu-kit\"], timeout_s 600, command:\n"
                  + device_command(repo))
        elif args.cmd == "trim":
            print(f"untracked {len(trim(repo))} files (on disk still); undo: restore")
        elif args.cmd == "restore":
            restore(repo)
            print("index restored from HEAD")
        elif args.cmd == "command":
            print(device_command(repo))
        else:
            t = travelling_bytes(repo)
            print(f"tracked {t['tracked'] / 2**20:.1f} MiB, untracked {t['untracked'] / 2**20:.1f}"
                  " MiB (carried paths come on top)")
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        msg = e.stderr.strip().splitlines()[-1] if getattr(e, "stderr", None) else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
