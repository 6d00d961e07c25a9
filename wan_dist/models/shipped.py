"""The trained weights the package ships: `toy` and `toy-i2v` (wan_dist/models/TOY.md), in half precision.

``wan_dist/weights/toy`` is a whole checkpoint in the diffusers layout. ``wan_dist/weights/toy-i2v`` holds only
what differs from it (``transformer``, ``transformer_2``, ``scheduler``, ``model_index.json``): the two models share their VAE,
text encoder and tokenizer, which keeps both under the 30 MB the repository allows. :func:`shipped_checkpoint`
assembles a loadable folder for a preset (toy: the package folder itself; toy-i2v: a copy in the cache with the
shared parts added), or returns None where nothing is shipped (random weights are written instead).

:func:`ship` makes those folders from published training runs (``<out>/model`` of ``wan-dist train``)::

    python -m wan_dist.models.shipped runs/toy/model runs/toy-i2v/model
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["SHIPPED_DIR", "SHARED_PARTS", "shipped_checkpoint", "ship", "half_precision_copy"]

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"
SHARED_PARTS = ("vae", "text_encoder", "tokenizer")  # toy-i2v reads these from toy
_BASE = {"toy-i2v": "toy"}


def _complete(folder: Path) -> bool:
    return (folder / "model_index.json").exists()


def shipped_checkpoint(name: str, cache: Path, *, root: Path | None = None) -> Path | None:
    """A folder ``load_pipeline`` reads for preset ``name``'s shipped weights (under ``root``, default
    :data:`SHIPPED_DIR`), or None when none are shipped."""
    root = SHIPPED_DIR if root is None else root
    own = root / name
    if not _complete(own):
        return None
    base = _BASE.get(name)
    if base is None:
        return own
    base_folder = root / base
    if not _complete(base_folder):
        return None
    digest = hashlib.sha256()  # of every file it is made of: new weights get a new folder
    for folder in (own, *(base_folder / part for part in SHARED_PARTS)):
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
    digest = digest.hexdigest()[:12]
    folder = cache / "checkpoints" / f"{name}-shipped-{digest}"
    if _complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for part in SHARED_PARTS:
            if (base_folder / part).exists():
                shutil.copytree(base_folder / part, staging / part)
        shutil.copytree(own, staging, dirs_exist_ok=True)
        try:
            staging.rename(folder)
        except OSError:  # another process assembled it first: theirs is the same
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def half_precision_copy(source: Path, dest: Path, *, dtype: torch.dtype = torch.float16,
                        parts: tuple[str, ...] | None = None) -> None:
    """Copy checkpoint folder ``source`` to ``dest`` with every floating-point tensor in ``dtype``
    (``parts``: only these subfolders, plus model_index.json)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "model_index.json", dest / "model_index.json")
    for sub in sorted(p for p in source.iterdir() if p.is_dir()):
        if parts is not None and sub.name not in parts:
            continue
        for file in sorted(sub.rglob("*")):
            target = dest / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            if file.suffix == ".safetensors":
                tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_file(file).items()}
                save_file(tensors, str(target), metadata={"format": "pt"})
            elif file.suffix == ".json" and file.is_file():
                target.write_text(_clean_json(file))
            elif file.is_file():
                shutil.copy2(file, target)
        index = sub / "diffusion_pytorch_model.safetensors.index.json"
        if index.exists():  # the index's total size follows the new dtype
            data = json.loads(index.read_text())
            size = sum(f.stat().st_size for f in (dest / sub.name).glob("*.safetensors"))
            data.setdefault("metadata", {})["total_size"] = size
            (dest / sub.name / index.name).write_text(json.dumps(data, indent=2))


def _clean_json(file: Path) -> str:
    """A config file without ``_name_or_path`` (diffusers records where it was loaded from: a local path)."""
    data = json.loads(file.read_text())
    if isinstance(data, dict):
        data.pop("_name_or_path", None)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def ship(toy: Path, toy_i2v: Path | None = None, *, to: Path = SHIPPED_DIR) -> dict[str, int]:
    """Write the shipped folders from published runs; returns each folder's size in bytes. ``toy_i2v`` must have
    been trained with ``vae_from`` the toy run's VAE (the VAE is shipped once)."""
    sizes = {}
    for name, source, parts in (("toy", toy, None), ("toy-i2v", toy_i2v, ("transformer", "transformer_2", "scheduler"))):
        if source is None:
            continue
        if parts is not None:
            _check_shared(source, toy)
        target = to / name
        shutil.rmtree(target, ignore_errors=True)
        half_precision_copy(source, target, parts=parts)
        sizes[name] = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    return sizes


def _content(file: Path) -> bytes | str:
    return _clean_json(file) if file.suffix == ".json" else file.read_bytes()


def _check_shared(i2v: Path, toy: Path) -> None:
    """toy-i2v is shipped without its VAE, text encoder and tokenizer: they must be toy's, file for file."""
    for part in SHARED_PARTS:
        ours = sorted(p.relative_to(i2v) for p in (i2v / part).rglob("*") if p.is_file())
        theirs = sorted(p.relative_to(toy) for p in (toy / part).rglob("*") if p.is_file())
        same = ours == theirs and all(_content(i2v / f) == _content(toy / f) for f in ours)
        if not same:
            raise ValueError(f"toy_i2v: its {part} differs from toy's; train it with vae_from=<the toy run>/vae "
                             f"and the toy run's data/tokenizer copied into its data/ folder")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the shipped toy / toy-i2v weights from trained runs")
    parser.add_argument("toy", type=Path, help="the toy run's published model folder (<out>/model)")
    parser.add_argument("toy_i2v", type=Path, nargs="?", help="the toy-i2v run's model folder")
    args = parser.parse_args(argv)
    for name, size in ship(args.toy, args.toy_i2v).items():
        print(f"{name}: {size / 1e6:.1f} MB in {SHIPPED_DIR / name}")


if __name__ == "__main__":
    main()
