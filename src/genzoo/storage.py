"""Storage at the bottom of genzoo: files written atomically, JSON, safetensors and the training lock.

Nothing here knows what a run, a family or a data set is. Nothing is ever unpickled: tensors live in safetensors
files, everything else in JSON. Every file is written to a temporary name in the same folder, flushed to disk and
renamed over the old one, so a crash at any moment leaves the previous complete file in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from genzoo.errors import RunError

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
