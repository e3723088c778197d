"""Run folders: what a training writes, how it is written (atomically), and how it is read back.

    config.json               the full resolved config (family, model, train, eval)
    model.safetensors         the weights used for sampling and evaluation (the EMA weights when EMA is on)
    checkpoint.safetensors    everything needed to resume: weights, EMA, optimizer, RNG states and counters
    metrics.jsonl             one JSON line per epoch (train loss, validation metrics, speed)
    summary.json              the final evaluation, wall time, images/s
    *.png                     the family's pictures and curves.png
    .lock                     held (flock) by the process training the folder, so a second training is refused

Nothing is ever unpickled: tensors live in safetensors files, everything else in JSON (the checkpoint's
counters and optimizer hyper-parameters sit in the safetensors header's metadata). Every file is written to a
temporary name in the same folder, flushed to disk and renamed over the old one, so a crash at any moment
leaves the previous complete file in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from genzoo import __version__
from genzoo.data.datasets import data_shape
from genzoo.config import EvalConfig, TrainConfig, from_dict, to_dict
from genzoo.errors import ConfigError, GenzooError, RunError

CONFIG = "config.json"
MODEL = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
FID_EVAL = "eval-fid.json"  # `genzoo eval RUN --fid`; `genzoo eval RUN` writes eval_file(split)
CHECKPOINT_FORMAT = "genzoo-checkpoint-2"  # 2: one optimizer per player (optim.PLAYER.*)


def eval_file(split: str) -> str:
    return f"eval-{split}.json"


# --- atomic writes -------------------------------------------------------------------------------------
def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync, then rename tmp over ``path``; ``path`` is never half-written. A write that
    fails (a full disk, a file-size limit, no permission) is a RunError, and the previous ``path`` is intact."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}.") from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        Path(tmp).unlink(missing_ok=True)
        what = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        kept = "the previous file is intact" if path.exists() else "nothing was written"
        raise RunError(f"could not write {path} ({what}); {kept}.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


LOCK = ".lock"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")  # torch.save and pickle files: never loaded


@contextmanager
def training_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on RUN/.lock while training it: a second training of the same folder (two resumes,
    or two benches) is refused instead of interleaving writes. The kernel drops the lock when the process ends,
    however it ends, so a crash never leaves a folder locked. (Without fcntl, on Windows, nothing is locked.)"""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(f"{run_dir} is being trained by another process (pid {holder}); wait for it to end, "
                           f"or train into another folder.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: Path) -> dict:
    """A JSON object from a file; a missing or damaged one is a RunError that names it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: no such file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is damaged: not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is damaged: not a JSON object.")
    return data


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; a damaged one is a RunError that names it."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:  # one read gives both the header and the tensors
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except FileNotFoundError:
        raise RunError(f"{path}: no such file.") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RunError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0] if str(e) else e}).") from None


# --- config ---------------------------------------------------------------------------------------
@dataclass
class RunConfig:
    family: str
    model: Any
    train: TrainConfig
    eval: EvalConfig

    def to_json(self) -> dict:
        return {"genzoo_version": __version__, "family": self.family, "model": to_dict(self.model),
                "train": to_dict(self.train), "eval": to_dict(self.eval)}


def read_config(run_dir: Path) -> RunConfig:
    from genzoo.models import get_family
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir} is not a run folder (no such directory).")
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run folder (it has no {CONFIG}).")
    data = read_json(path)
    missing = [k for k in ("family", "model", "train", "eval") if k not in data]
    if missing:
        raise RunError(f"{path} is damaged: it lacks {', '.join(missing)}.")
    try:
        family = get_family(data["family"]) if isinstance(data["family"], str) else None
        if family is None:
            raise ConfigError("'family' must be a string.")
        return RunConfig(family=data["family"], model=from_dict(family.Config, data["model"], "model"),
                         train=from_dict(TrainConfig, data["train"], "train"),
                         eval=from_dict(EvalConfig, data["eval"], "eval"))
    except GenzooError as e:
        raise RunError(f"{path} is damaged: {e}") from None


# --- models --------------------------------------------------------------------------------------
def build_model(cfg: RunConfig, image_shape: tuple[int, ...]):
    from genzoo.models import get_family
    family = get_family(cfg.family)
    if len(image_shape) == 1 and not family.takes_points:
        raise ConfigError(f"the {cfg.family} family models images; {cfg.train.dataset} is a set of 2-D points "
                          f"(the gan and ebm families train on it).")
    return family(cfg.model, image_shape)


def load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path | str) -> None:
    """Load a state dict strictly: missing, unexpected or mis-shaped tensors are a RunError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) such as '{missing[0]}'")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) such as '{unexpected[0]}'")
        raise RunError(f"{where} does not match the model in config.json: {'; '.join(parts)}.")
    for k, v in tensors.items():
        if v.shape != own[k].shape or v.dtype != own[k].dtype:
            raise RunError(f"{where} does not match the model in config.json: tensor '{k}' has shape "
                           f"{tuple(v.shape)} ({v.dtype}), expected {tuple(own[k].shape)} ({own[k].dtype}).")
    module.load_state_dict(tensors)


@dataclass
class Run:
    """A loaded run: ``run.model`` (in eval mode, on CPU unless moved), ``run.config``, ``run.path``."""

    path: Path
    config: RunConfig
    model: Any

    def summary(self) -> dict | None:
        p = self.path / SUMMARY
        return json.loads(p.read_text()) if p.is_file() else None


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Rebuild a run's model from ``config.json`` and ``model.safetensors``. Nothing is unpickled."""
    path = Path(path)
    cfg = read_config(path)
    model = build_model(cfg, data_shape(cfg.train.dataset))
    weights_path = path / MODEL
    if not weights_path.is_file():
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise RunError(f"{path} has no {MODEL}, only {pickled[0]}, a pickle file; genzoo never unpickles "
                           f"(loading a pickle can run any code it holds), so convert the weights to safetensors "
                           f"where you trust them.")
        raise RunError(f"{path} has no {MODEL} yet (has its training written a checkpoint?).")
    tensors, _ = load_tensors(weights_path)
    load_weights(model, tensors, weights_path)
    model.to(device).eval()
    return Run(path=path, config=cfg, model=model)


def read_metrics(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / METRICS
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut off by a crash; the checkpoint decides what is redone
    return rows


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(Path(run_dir) / METRICS, lambda tmp: Path(tmp).write_text(text))
