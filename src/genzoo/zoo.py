"""The zoo: trained models that ship with genzoo, named ``zoo:NAME`` wherever a run folder is accepted.

A zoo model is a run folder without its training checkpoint: config.json, model.safetensors (floating tensors stored in
half precision, or the large ones in 8 bits with a scale per output unit; loading restores the model's own precision),
the run's summary, evaluations and pictures, and card.json, its model card (the training command, version, commit, CPU
time, machine, date, and the figures with their n, reference and units). ``index.json`` beside the models lists, for
each, the SHA-256 of every file; every file is checked against it each time the model is opened, so a damaged or
substituted file is refused in one sentence.

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
INT8 = "int8"  # the large matrices and kernels in 8 bits with a scale per output slice, the rest in half precision
SCALE = "#scale"  # the key suffix of an 8-bit tensor's scales (no module's state has a '#')
INT8_MIN_VALUES = 4096  # smaller tensors (biases, norms, small kernels) stay in half precision


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


def int8_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every weight of 2 or more dimensions and ``INT8_MIN_VALUES`` or more values (linear and convolution weights; not
    buffers such as a fitted prior's Cholesky factors, nor a spectral norm's ``weight.original``) as int8 q with one
    float32 scale per slice of its first dimension (an output unit): w ≈ q · scale, scale = max |w| / 127 over the
    slice, stored as NAME#scale; the rest in half precision. Each weight moves by at most half a scale step; the zoo
    measures a model's figures on these stored weights, not on the run's."""
    out = {}
    for key, value in tensors.items():
        if (key.endswith("weight") and value.is_floating_point() and value.dim() >= 2
                and value.numel() >= INT8_MIN_VALUES):
            flat = value.detach().float().reshape(value.shape[0], -1)
            scale = flat.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
            out[key] = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(value.shape)
            out[key + SCALE] = scale
        else:
            out[key] = value.half() if value.is_floating_point() else value
    return out


def stored_weights(tensors: dict[str, torch.Tensor], stored_as: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and safetensors metadata of weights stored as ``stored_as`` (HALF or INT8)."""
    if stored_as == HALF:
        return half_weights(tensors), {"storage_dtype": HALF}
    if stored_as == INT8:
        return int8_weights(tensors), {"storage_dtype": INT8}
    raise ConfigError(f"unknown zoo storage '{stored_as}'; use {HALF} or {INT8}.")


def restore_precision(tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                      own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights stored in half precision or 8 bits (metadata storage_dtype = float16 or int8) restored to the dtype
    of the model's own tensors ``own`` (8-bit ones as q · scale); any other file is returned as it is (and then
    checked strictly)."""
    stored_as = metadata.get("storage_dtype")
    if stored_as not in (HALF, INT8):
        return tensors
    out = {}
    for key, value in tensors.items():
        if key.endswith(SCALE) and stored_as == INT8:
            continue
        if stored_as == INT8 and value.dtype == torch.int8 and key + SCALE in tensors:
            scale = tensors[key + SCALE]
            value = value.float() * scale.reshape(-1, *[1] * (value.dim() - 1))
        if key in own and value.is_floating_point():
            value = value.to(own[key].dtype)
        out[key] = value
    return out


def training_hours(card: dict) -> tuple[float, str]:
    """What a model's training cost, from its card: (hours, "CPU" or "GPU"). The card's ``cpu_hours`` is the wall
    time of training on its ``device`` (a card without one was trained on a CPU)."""
    return card["cpu_hours"], ("CPU" if card.get("device", "cpu") == "cpu" else "GPU")


def pack(run_dir: Path, name: str, card: dict, root: Path | None = None, url: str | None = None,
         results: dict[str, dict] | None = None, release: Callable[[dict, dict], tuple[dict, dict]] | None = None,
         stored_as: str = HALF) -> dict:
    """Copy a finished run folder into the zoo as ``name``: weights stored as ``stored_as`` (HALF or INT8), the run's
    JSON and pictures, ``card`` as card.json, and ``results`` ({file name: JSON}, e.g. the scores of the packed weights,
    which replace the run's files of the same name); then (re)write the index entry with every file's SHA-256.
    ``release`` (the family's ``for_release``: the zoo sits below the models and does not look it up) trims the weights
    and model settings to what ships. Returns the entry."""
    root = root or ROOT
    run_dir = Path(run_dir)
    if not (run_dir / WEIGHTS).is_file() or not (run_dir / "summary.json").is_file():
        raise RunError(f"{run_dir} is not a finished run folder (it needs {WEIGHTS} and summary.json).")
    tensors, _ = storage.load_tensors(run_dir / WEIGHTS)
    config = storage.read_json(run_dir / "config.json")
    if release is not None:
        tensors, config["model"] = release(tensors, config["model"])
    stored = stored_weights(tensors, stored_as)  # an unknown storage is refused before the entry is touched
    folder = root / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    storage.save_tensors(folder / WEIGHTS, *stored)
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
