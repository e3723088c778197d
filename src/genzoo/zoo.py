"""The zoo: trained models that ship with genzoo, named ``zoo:NAME`` wherever a run folder is accepted.

A zoo model is a run folder without its training checkpoint: config.json, model.safetensors (floating tensors
stored in half precision; loading restores the model's own precision), the run's summary, evaluations and
pictures, and card.json, its model card (the training command, version, commit, CPU time, machine, date, and the
figures with their n, reference and units). ``index.json`` beside the models lists, for each, the SHA-256 of every
file; every file is checked against it each time the model is opened, so a damaged or substituted file is
refused in one sentence.

Where the models are looked for, in order: the package (weights/zoo/NAME), then the user's cache
(~/.cache/genzoo/zoo/NAME). An index entry with a "url" can be fetched there: each file from URL/FILE, verified
before an atomic rename, so a larger zoo can live outside the package without changing ``zoo:NAME``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from genzoo import storage
from genzoo.data.datasets import cache_dir
from genzoo.data.fetch import fetch_verified, sha256_file, sha256_problem
from genzoo.errors import ConfigError, RunError

PREFIX = "zoo:"
ROOT = Path(__file__).parent / "weights" / "zoo"  # the models shipped in the package
INDEX = "index.json"
CARD = "card.json"
WEIGHTS = "model.safetensors"  # (runs.MODEL; the zoo sits below runs and names it itself)
HALF = "float16"  # the storage precision of the weights, said in the safetensors metadata "storage_dtype"


def is_zoo(name: str | Path) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def read_index(root: Path | None = None) -> dict[str, dict]:
    path = (root or ROOT) / INDEX
    return storage.read_json(path)["models"] if path.is_file() else {}


def names(root: Path | None = None) -> list[str]:
    return sorted(read_index(root))


def entry(name: str, root: Path | None = None) -> dict:
    """The index entry of zoo model ``name`` (with or without the zoo: prefix)."""
    name = name.removeprefix(PREFIX)
    models = read_index(root)
    if name not in models:
        have = ", ".join(f"zoo:{n}" for n in sorted(models)) or "none in this installation"
        raise ConfigError(f"there is no zoo model '{name}'; the zoo has: {have}.")
    return models[name]


def cache_root() -> Path:
    return cache_dir() / "zoo"


def resolve(name: str | Path, root: Path | None = None, timeout: float = 60.0) -> Path:
    """The folder of a run: ``name`` itself, or for zoo:NAME the verified folder of that zoo model (fetched into the
    cache first when the index gives it a URL and no complete copy is at hand)."""
    if not is_zoo(name):
        return Path(name)
    root = root or ROOT
    short = str(name).removeprefix(PREFIX)
    info = entry(short, root)
    files = info["files"]
    for base, remedy in ((root, "reinstall genzoo"), (cache_root(), "delete it to fetch it again")):
        folder = base / short
        if all((folder / f).is_file() for f in files):
            for f, sha256 in files.items():
                wrong = sha256_problem(folder / f, sha256)
                if wrong:
                    raise RunError(f"zoo:{short}: {folder / f} {wrong}: the file is damaged or was replaced; {remedy}.")
            return folder
    if not info.get("url"):
        raise RunError(f"zoo:{short} is listed but its files are not in this installation ({root / short}); "
                       f"reinstall genzoo.")
    folder = cache_root() / short
    folder.mkdir(parents=True, exist_ok=True)
    for f, sha256 in files.items():
        target = folder / f
        if target.is_file() and sha256_problem(target, sha256) is None:
            continue
        fetch_verified(info["url"].rstrip("/") + "/" + f, target, lambda tmp, s=sha256: sha256_problem(tmp, s),
                       timeout, RunError)
    return folder


def half_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}


def restore_precision(tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                      own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights stored in half precision (metadata storage_dtype = float16) cast back to the dtype of the model's
    own tensors ``own``; any other file is returned as it is (and then checked strictly)."""
    if metadata.get("storage_dtype") != HALF:
        return tensors
    return {k: v.to(own[k].dtype) if k in own and v.dtype == torch.float16 else v for k, v in tensors.items()}


def training_hours(card: dict) -> tuple[float, str]:
    """What a model's training cost, from its card: (hours, "CPU" or "GPU"). The card's ``cpu_hours`` is the wall
    time of training on its ``device`` (a card without one was trained on a CPU)."""
    return card["cpu_hours"], ("CPU" if card.get("device", "cpu") == "cpu" else "GPU")


def pack(run_dir: Path, name: str, card: dict, root: Path | None = None, url: str | None = None,
         results: dict[str, dict] | None = None, release: Callable[[dict, dict], tuple[dict, dict]] | None = None
         ) -> dict:
    """Copy a finished run folder into the zoo as ``name``: weights in half precision, the run's JSON and pictures,
    ``card`` as card.json, and ``results`` ({file name: JSON}, e.g. the scores of the packed weights, which replace
    the run's files of the same name); then (re)write the index entry with every file's SHA-256. ``release`` (the
    family's ``for_release``: the zoo sits below the models and does not look it up) trims the weights and model
    settings to what ships. Returns the entry."""
    root = root or ROOT
    run_dir = Path(run_dir)
    if not (run_dir / WEIGHTS).is_file() or not (run_dir / "summary.json").is_file():
        raise RunError(f"{run_dir} is not a finished run folder (it needs {WEIGHTS} and summary.json).")
    folder = root / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    tensors, _ = storage.load_tensors(run_dir / WEIGHTS)
    config = storage.read_json(run_dir / "config.json")
    if release is not None:
        tensors, config["model"] = release(tensors, config["model"])
    storage.save_tensors(folder / WEIGHTS, half_weights(tensors), {"storage_dtype": HALF})
    storage.write_json(folder / "config.json", config)
    kept = ["summary.json"] + sorted(p.name for p in run_dir.glob("eval-*.json"))
    kept += sorted(p.name for p in run_dir.glob("*.png"))
    for f in kept:
        shutil.copyfile(run_dir / f, folder / f)
    storage.write_json(folder / CARD, card)
    for f, result in (results or {}).items():
        storage.write_json(folder / f, result)
    return reindex(name, root, url)


def reindex(name: str, root: Path | None = None, url: str | None = None) -> dict:
    """(Re)write the index entry of zoo model ``name`` from the files in its folder: each file's SHA-256 and the
    total size (after ``pack``, or after its pictures were redrawn). Returns the entry."""
    root = root or ROOT
    folder = root / name
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    index_path = root / INDEX
    index = storage.read_json(index_path) if index_path.is_file() else {"format": 1, "models": {}}
    url = url or index["models"].get(name, {}).get("url")
    index["models"][name] = {"files": files, "bytes": sum((folder / f).stat().st_size for f in files),
                             **({"url": url} if url else {})}
    index["models"] = dict(sorted(index["models"].items()))
    storage.write_json(index_path, index)
    return index["models"][name]


def read_card(name: str, root: Path | None = None) -> dict:
    return storage.read_json(resolve(PREFIX + name.removeprefix(PREFIX), root) / CARD)
