"""Run folders: what a training writes, how it is written (atomically), and how it is read back.

    config.json               the full resolved config (family, model, train, eval)
    model.safetensors         the weights used for sampling and evaluation (the EMA weights when EMA is on)
    checkpoint.safetensors    everything needed to resume: weights, EMA, optimizer, RNG states and counters
    metrics.jsonl             one JSON line per epoch (train loss, validation metrics, speed)
    summary.json              the final evaluation, wall time, images/s
    *.png                     the family's pictures and curves.png
    .lock                     held (flock) by the process training the folder, so a second training is refused

Nothing is ever unpickled: tensors live in safetensors files, everything else in JSON (the checkpoint's
counters and optimizer hyper-parameters sit in the safetensors header's metadata). How files are written
(atomically) and the lock live in ``storage``; this module knows what a run holds and how it is rebuilt.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genzoo._version import __version__
from genzoo.config import EvalConfig, TrainConfig, from_dict, to_dict, validate
from genzoo.data.datasets import class_count, data_shape, folder_settings, is_folder_name, load_dataset
from genzoo.data.fetch import sha256_file
from genzoo.data.folder import list_folder
from genzoo.data.toy import TOY_DATASETS
from genzoo.errors import ConfigError, GenzooError, RunError
from genzoo import zoo
from genzoo.models import FAMILIES, get_family
from genzoo.storage import PICKLE_SUFFIXES, atomic_write, load_tensors, load_weights, read_json, save_tensors

CONFIG = "config.json"
MODEL = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
FID_EVAL = "eval-fid.json"  # `genzoo eval RUN --fid`; `genzoo eval RUN` writes eval_file(split)
CHECKPOINT_FORMAT = "genzoo-checkpoint-2"  # 2: one optimizer per player (optim.PLAYER.*)
# Settings a resumed run may change; everything else is fixed by the run's config.json.
RESUMABLE_CHANGES = ("epochs", "max_steps", "time_limit", "device", "precision", "compile", "final_eval")


def eval_file(split: str) -> str:
    return f"eval-{split}.json"


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


def new_config(family: str, model: dict | None = None, train: dict | None = None,
               eval: dict | None = None, preset: str | None = None) -> RunConfig:
    """The configuration of a new run: the family's defaults (its defaults for 2-D points when ``train`` names a
    toy data set), then the model settings of the run it fine-tunes (``init_from``), then the named ``preset``'s
    settings, overridden by the given settings, every value validated.
    The one place a RunConfig is made."""
    fam = get_family(family)
    train = dict(train or {})
    toy = fam.points_defaults if train.get("dataset", TrainConfig().dataset) in TOY_DATASETS else {}
    if preset is not None and preset not in fam.presets:
        have = ", ".join(fam.presets) or "none"
        raise ConfigError(f"the {family} family has no preset '{preset}'; its presets: {have}.")
    chosen = fam.presets[preset] if preset is not None else None
    dataset = train.get("dataset", fam.train_defaults.get("dataset", TrainConfig().dataset))
    listing = None
    if is_folder_name(dataset):  # the images' shape and the folder's identity are fixed when the run is made
        listing = list_folder(dataset)
        train.update(folder_settings(dataset, train.get("image_channels", 0), train.get("image_size", 0), listing))
    else:
        for key in ("image_channels", "image_size"):
            if train.get(key):
                raise ConfigError(f"--{key.replace('_', '-')} applies to a folder of images; {dataset} has its "
                                  f"own fixed shape.")
    source = {}
    if train.get("init_from"):  # fine-tuning: the source's network settings, unless the preset or a flag says else
        saved = read_config(zoo.resolve(train["init_from"]))
        same_family(train["init_from"], saved.family, family)
        source = to_dict(saved.model)
    model_cfg = validate(fam.Config(**{**toy.get("model", {}), **source, **(chosen.model if chosen else {}),
                                       **(model or {})}), prefix="--")
    if fam.class_conditional:  # the label set is the data's, recorded with the run
        classes = class_count(dataset, listing)
        if model_cfg.class_cond and not classes and source.get("class_cond") and "class_cond" not in (model or {}):
            raise ConfigError(f"--init-from {train['init_from']} is class-conditional, and {dataset} has no class "
                              f"subfolders: fine-tune it on images sorted into one subfolder per class.")
        if model_cfg.class_cond and not classes:
            raise ConfigError(f"--class-cond needs labelled images: {dataset} has no class subfolders (put the "
                              f"images of each class in a subfolder of their own).")
        model_cfg = dataclasses.replace(model_cfg, num_classes=classes or model_cfg.num_classes)
    return RunConfig(
        family=family,
        model=model_cfg,
        train=validate(TrainConfig(**{**fam.train_defaults, **toy.get("train", {}), **(chosen.train if chosen else {}),
                                      **train}), prefix="--"),
        eval=validate(EvalConfig(**{**fam.final_eval_defaults, **(eval or {})}), prefix="--eval-"))


def resumed_config(saved: RunConfig, model: dict | None = None, train: dict | None = None,
                   eval: dict | None = None) -> RunConfig:
    """A saved run's configuration with the changes a resume allows (RESUMABLE_CHANGES, and any final-evaluation
    setting); a change to anything else is refused, naming it."""
    for section, given in (("model", model or {}), ("train", train or {})):
        for key, value in given.items():
            old = getattr(getattr(saved, section), key)
            if value != old and key not in RESUMABLE_CHANGES:
                allowed = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE_CHANGES)
                raise ConfigError(f"--{key.replace('_', '-')} {value} differs from the run's saved value {old}; a "
                                  f"resumed run keeps its settings (only {allowed} may change).")
    return dataclasses.replace(
        saved, train=validate(dataclasses.replace(saved.train, **(train or {})), prefix="--"),
        eval=validate(dataclasses.replace(saved.eval, **(eval or {})), prefix="--eval-"))


def read_config(run_dir: Path) -> RunConfig:
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
    family = get_family(cfg.family)
    if len(image_shape) == 1 and not family.takes_points:
        raise ConfigError(f"the {cfg.family} family models images; {cfg.train.dataset} is a set of 2-D points "
                          f"(the gan and ebm families train on it).")
    if len(image_shape) == 3 and image_shape[0] not in family.channels_supported:
        colour = ", ".join(name for name, f in FAMILIES.items() if 3 in f.channels_supported)
        raise ConfigError(f"the {cfg.family} family trains on grey images only so far; {cfg.train.dataset} has "
                          f"{image_shape[0]} channels ({colour} take colour; or give --image-channels 1).")
    return family(cfg.model, image_shape)


def same_family(source: str, theirs: str, ours: str) -> None:
    """Refuse, in one sentence, to fine-tune a model of family ``ours`` from ``source``, one of family ``theirs``."""
    if theirs != ours:
        raise ConfigError(f"--init-from {source} is of the family {theirs}; this run trains {ours}.")


def start_from(model, model_cfg: Any, source: str) -> str:
    """Copy the parameters of the run or zoo model ``source`` into ``model`` (``--init-from``, fine-tuning); returns
    the SHA-256 of the weights file they came from (the run records it: a zoo name may later hold other weights).

    Every parameter must exist in both with the same shape, so the family and its network settings must agree;
    buffers are not copied (they follow the new run's settings: a noise schedule, an EBM's chains, a fitted prior).
    Building the source's model draws from the global RNG, so it is built under a forked one: a fine-tuning run
    draws its data order and noise exactly as the same run from scratch would.
    """
    with torch.random.fork_rng(devices=[]):
        init = load_run(source)
    same_family(source, init.config.family, model.family)
    theirs, ours = dict(init.model.named_parameters()), dict(model.named_parameters())
    for name in sorted(set(theirs) | set(ours)):
        if name not in theirs or name not in ours or theirs[name].shape != ours[name].shape:
            there = tuple(theirs[name].shape) if name in theirs else "absent"
            here = tuple(ours[name].shape) if name in ours else "absent"
            theirs_cfg, ours_cfg = to_dict(init.config.model), to_dict(model_cfg)
            flags = " ".join(f"--{k.replace('_', '-')} {str(v).lower() if isinstance(v, bool) else v}"
                             for k, v in theirs_cfg.items() if ours_cfg.get(k) != v)
            differ = f"; its settings that differ from this run's: {flags}." if flags else "."
            raise ConfigError(f"--init-from {source} has another network: parameter '{name}' is {there} there and "
                              f"{here} here{differ}")
    with torch.no_grad():
        for name, p in ours.items():
            p.copy_(theirs[name])
    return sha256_file(init.path / MODEL)


def shape_of(cfg: RunConfig) -> tuple[int, ...]:
    """The shape of one example of the run's data, from its config alone."""
    return data_shape(cfg.train.dataset, cfg.train.image_channels, cfg.train.image_size)


def run_data(cfg: RunConfig):
    """The run's data set: for a folder, read as the run recorded it and refused if the folder has changed."""
    return load_dataset(cfg.train.dataset, channels=cfg.train.image_channels, image_size=cfg.train.image_size,
                        digest=cfg.train.data_digest)


@dataclass
class Run:
    """A loaded run: ``run.model`` (in eval mode, on CPU unless moved), ``run.config``, ``run.path``."""

    path: Path
    config: RunConfig
    model: Any


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Rebuild a run's model from ``config.json`` and ``model.safetensors`` of a run folder, or of the zoo model
    named "zoo:NAME" (its files verified first). Nothing is unpickled."""
    path = zoo.resolve(path)
    cfg = read_config(path)
    model = build_model(cfg, shape_of(cfg))
    weights_path = path / MODEL
    if not weights_path.is_file():
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise RunError(f"{path} has no {MODEL}, only {pickled[0]}, a pickle file; genzoo never unpickles "
                           f"(loading a pickle can run any code it holds), so convert the weights to safetensors "
                           f"where you trust them.")
        raise RunError(f"{path} has no {MODEL} yet (has its training written a checkpoint?).")
    tensors, metadata = load_tensors(weights_path)
    load_weights(model, zoo.restore_precision(tensors, metadata, model.state_dict()), weights_path)
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


# --- the checkpoint ------------------------------------------------------------------------------
# The optimizer's settings that choose a kernel, not the update: taken from the resuming optimizer.
OPTIMIZER_IMPLEMENTATION = ("foreach", "fused", "capturable", "differentiable")


# One safetensors file: model.*, ema.*, optim.PLAYER.PID.NAME (the optimizer's tensors), rng.* (torch, data and
# CUDA generator states); its metadata holds the format, the trainer's counters (``progress``) and the optimizers'
# non-tensor state (param_groups, optim_scalars) as JSON.
def save_checkpoint(path: Path, model: torch.nn.Module, ema: torch.nn.Module | None,
                    optimizers: dict[str, torch.optim.Optimizer], rng: dict[str, torch.Tensor], progress: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    optim_scalars: dict[str, dict] = {}
    param_groups: dict[str, list] = {}
    for player, optimizer in optimizers.items():
        opt = optimizer.state_dict()
        param_groups[player] = opt["param_groups"]
        optim_scalars[player] = {}
        for pid, st in opt["state"].items():
            for name, value in st.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{player}.{pid}.{name}"] = value
                else:
                    optim_scalars[player][f"{pid}.{name}"] = value
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    metadata = {"format": CHECKPOINT_FORMAT, "progress": json.dumps(progress),
                "param_groups": json.dumps(param_groups), "optim_scalars": json.dumps(optim_scalars)}
    save_tensors(path, tensors, metadata)


def load_checkpoint(path: Path, model: torch.nn.Module, ema: torch.nn.Module | None,
                    optimizers: dict[str, torch.optim.Optimizer], device: torch.device) -> tuple[dict, dict]:
    """Load a checkpoint into the model, its EMA and its optimizers; returns (progress, rng states). Nothing is
    changed unless the whole file fits: a damaged or foreign checkpoint is a RunError that names it."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not a genzoo checkpoint (format {meta.get('format')!r}).")
    try:
        progress = json.loads(meta["progress"])
        param_groups = json.loads(meta["param_groups"])
        optim_scalars = json.loads(meta["optim_scalars"])
        if not isinstance(progress, dict) or not isinstance(param_groups, dict) or not isinstance(optim_scalars, dict):
            raise TypeError("not JSON objects")
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise RunError(f"{path} is damaged: its metadata cannot be read ({e}).") from None
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}, "rng": {}}
    for key, value in tensors.items():
        head, _, rest = key.partition(".")
        if head not in groups:
            raise RunError(f"{path} is damaged: unexpected tensor '{key}'.")
        groups[head][rest] = value
    if set(param_groups) != set(optimizers):
        raise RunError(f"{path} does not fit this run (its optimizers are {', '.join(param_groups)}).")
    states: dict[str, dict[int, dict]] = {player: {} for player in optimizers}
    for key, value in groups["optim"].items():
        player, pid, name = key.split(".", 2)
        if player not in states:
            raise RunError(f"{path} is damaged: unexpected tensor 'optim.{key}'.")
        states[player].setdefault(int(pid), {})[name] = value.to(device) if name != "step" else value
    for player, scalars in optim_scalars.items():
        for key, value in scalars.items():
            pid, name = key.split(".", 1)
            states[player].setdefault(int(pid), {})[name] = value
    for g in (g for groups_ in param_groups.values() for g in groups_):
        for k, v in g.items():
            if k != "params" and isinstance(v, list):
                g[k] = tuple(v)
    for player, optimizer in optimizers.items():  # how the update is computed belongs to this process, not the file:
        for saved, live in zip(param_groups[player], optimizer.param_groups):  # a fused CUDA run resumes on any device
            saved.update({k: live[k] for k in OPTIMIZER_IMPLEMENTATION if k in live})
    load_weights(model, groups["model"], path)
    if ema is not None:
        load_weights(ema, groups["ema"], path)
    try:
        for player, optimizer in optimizers.items():
            optimizer.load_state_dict({"state": states[player], "param_groups": param_groups[player]})
            match_layouts(optimizer)
    except (KeyError, ValueError, RuntimeError) as e:
        raise RunError(f"{path} does not fit this run ({str(e).splitlines()[0]}).") from None
    return progress, groups["rng"]


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each state tensor of ``optimizer`` (Adam's moments) its parameter's memory layout: a checkpoint stores
    them contiguous, a channels-last network's weights are not, and CUDA's fused Adam refuses the mix ("must have
    same dtype, device, and layout") at the first step of a resumed run."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step a checkpoint was written at (None when there is none), reading only its header."""
    if not Path(path).is_file():
        return None
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["progress"])["step"]
