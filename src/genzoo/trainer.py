"""The one trainer. Nothing in this file knows which family it trains.

A family provides ``loss(x) -> [N]``; the trainer reduces it, steps Adam (with optional gradient clipping and
an EMA of the weights). A family with several players (the GAN's generator and discriminator) names them in
``players`` and plugs its own ``train_step`` in, calling back ``update(player, losses)`` for each optimisation of
a player; the loop, the schedule, the checkpoints and the stopping rules stay the same. The trainer checkpoints
atomically every epoch, resumes exactly, and stops cleanly on SIGINT or SIGTERM (finishing the step, then
saving) or on a non-finite loss (keeping the last good checkpoint).

Resuming is exact on CPU: the data order of an epoch depends only on (seed, epoch), and the checkpoint holds
the torch and data RNG states, so a resumed run takes the same steps as an uninterrupted one.

Launched by torchrun, the same loop trains data-parallel with DistributedDataParallel: see distributed.py for
how the batch is divided, what is agreed across ranks and what only rank 0 does.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Callable

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from genzoo import distributed, runs
from genzoo.data.datasets import ImageDataset, load_dataset
from genzoo.data.views import batch_indices, get_view
from genzoo.errors import ConfigError, GenzooError, ModelDiverged, RunError, TrainingDiverged
from genzoo.evaluate import evaluate, eval_tensor, isolated_rng, validation_metrics
from genzoo.models.base import GenerativeModel
from genzoo.plots import plot_curves, save_grid

PICTURE_SEED = 1234  # the noise behind samples.png and friends


def learning_rate(step: int, total_steps: int, base: float, schedule: str, warmup_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
    if warmup_steps and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


class Interrupted(GenzooError):
    exit_code = 130


def pick_device(name: str) -> torch.device:
    """auto -> cuda, then mps, then cpu; an explicit device that is not available is an error."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but this torch build sees no CUDA device.")
    if name == "mps" and not has_mps:
        raise ConfigError("--device mps was asked for, but this machine has no MPS device.")
    return torch.device(name)


@dataclass
class Progress:
    """The counters a checkpoint carries besides tensors."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done within the current epoch
    step: int = 0  # optimizer steps in all
    epoch_loss_sum: float = 0.0
    epoch_examples: int = 0
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0


class Trainer:
    def __init__(self, model: GenerativeModel, run_dir: Path, cfg: runs.RunConfig, data: ImageDataset,
                 log: Callable[[str], None] = print, progress_bar: bool = True,
                 ctx: distributed.Context | None = None):
        self.cfg, self.tcfg = cfg, cfg.train
        self.run_dir = Path(run_dir)
        self.data = data
        self.ctx = ctx = ctx or distributed.Context()  # one process unless torchrun launched several
        distributed.check_batch(ctx, self.tcfg.batch_size)
        self.log = log if ctx.is_main else (lambda message: None)
        self.progress_bar = progress_bar and ctx.is_main
        self.device = distributed.device_for(ctx, pick_device(self.tcfg.device))
        self.model = model.to(self.device)
        # what runs the loss methods: the DDP wrapper (which averages gradients across ranks) or the model
        self.net = distributed.wrap(self.model, ctx, self.device, len(model.players), model.ddp_broadcast_buffers)
        self.view = get_view(model.view)
        self.optimizers = {player: torch.optim.Adam(self.model.player_parameters(player), lr=self.tcfg.lr,
                                                    weight_decay=self.tcfg.weight_decay, **model.optimizer_options)
                           for player in model.players}
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.tcfg.ema_decay), use_buffers=True)
                    if self.tcfg.ema_decay > 0 else None)
        self.data_gen = torch.Generator(device=self.device).manual_seed(self.tcfg.seed + 1)
        self.state = Progress()
        self.metrics: list[dict] = []
        self._stop_signal: int | None = None
        self._val_x = eval_tensor(model, data, "val")
        self._train_images = data.train.images.to(self.device)
        self._train_labels = data.train.labels.to(self.device)

    @property
    def eval_model(self) -> GenerativeModel:
        """The weights that sample and get scored: the EMA's when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # --- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if not self.ctx.is_main:  # the ranks hold the same weights and optimizer states; rank 0 writes
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        optim_scalars: dict[str, dict] = {}
        param_groups: dict[str, list] = {}
        for player, optimizer in self.optimizers.items():
            opt = optimizer.state_dict()
            param_groups[player] = opt["param_groups"]
            optim_scalars[player] = {}
            for pid, st in opt["state"].items():
                for name, value in st.items():
                    if torch.is_tensor(value):
                        tensors[f"optim.{player}.{pid}.{name}"] = value
                    else:
                        optim_scalars[player][f"{pid}.{name}"] = value
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.data"] = self.data_gen.get_state()
        if self.device.type == "cuda":
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        metadata = {"format": runs.CHECKPOINT_FORMAT, "progress": json.dumps(asdict(self.state)),
                    "param_groups": json.dumps(param_groups), "optim_scalars": json.dumps(optim_scalars)}
        runs.save_tensors(self.run_dir / runs.CHECKPOINT, tensors, metadata)
        runs.save_tensors(self.run_dir / runs.MODEL, self.eval_model.state_dict())

    def load_checkpoint(self) -> None:
        path = self.run_dir / runs.CHECKPOINT
        tensors, meta = runs.load_tensors(path)
        legacy = meta.get("format") == "genzoo-checkpoint-1"  # one optimizer, before families had players
        if meta.get("format") != runs.CHECKPOINT_FORMAT and not legacy:
            raise RunError(f"{path} is not a genzoo checkpoint (format {meta.get('format')!r}).")
        try:
            progress = Progress(**json.loads(meta["progress"]))
            param_groups = json.loads(meta["param_groups"])
            optim_scalars = json.loads(meta["optim_scalars"])
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise RunError(f"{path} is damaged: its metadata cannot be read ({e}).") from None
        groups = {"model": {}, "ema": {}, "optim": {}, "rng": {}}
        for key, value in tensors.items():
            head, _, rest = key.partition(".")
            if head not in groups:
                raise RunError(f"{path} is damaged: unexpected tensor '{key}'.")
            groups[head][rest] = value
        if legacy:
            param_groups, optim_scalars = {"model": param_groups}, {"model": optim_scalars}
            groups["optim"] = {f"model.{k}": v for k, v in groups["optim"].items()}
        runs.load_weights(self.model, groups["model"], path)
        if self.ema is not None:
            runs.load_weights(self.ema, groups["ema"], path)
        if set(param_groups) != set(self.optimizers):
            raise RunError(f"{path} does not fit this run (its optimizers are {', '.join(param_groups)}).")
        states: dict[str, dict[int, dict]] = {player: {} for player in self.optimizers}
        for key, value in groups["optim"].items():
            player, pid, name = key.split(".", 2)
            if player not in states:
                raise RunError(f"{path} is damaged: unexpected tensor 'optim.{key}'.")
            states[player].setdefault(int(pid), {})[name] = value.to(self.device) if name != "step" else value
        for player, scalars in optim_scalars.items():
            for key, value in scalars.items():
                pid, name = key.split(".", 1)
                states[player].setdefault(int(pid), {})[name] = value
        for g in (g for groups_ in param_groups.values() for g in groups_):
            for k, v in g.items():
                if k != "params" and isinstance(v, list):
                    g[k] = tuple(v)
        try:
            for player, optimizer in self.optimizers.items():
                optimizer.load_state_dict({"state": states[player], "param_groups": param_groups[player]})
            torch.set_rng_state(groups["rng"]["torch"])
            self.data_gen.set_state(groups["rng"]["data"].to(torch.uint8))
            if self.device.type == "cuda":
                torch.cuda.set_rng_state_all([groups["rng"][f"cuda.{i}"] for i in range(torch.cuda.device_count())])
        except (KeyError, ValueError, RuntimeError) as e:
            raise RunError(f"{path} does not fit this run ({str(e).splitlines()[0]}).") from None
        self.state = progress
        # Lines for epochs the checkpoint does not cover (a crash between the two writes) are redone.
        self.metrics = [r for r in runs.read_metrics(self.run_dir) if r.get("epoch", 0) <= progress.epoch
                        and not r.get("partial")]

    # --- the loop ---------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def fit(self) -> dict:
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            finished = self._loop()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
        return self.finish(finished)

    def _budget_spent(self) -> bool:
        """--max-steps or --time-limit reached: stop, with a complete run folder."""
        t, s = self.tcfg, self.state
        return (bool(t.max_steps) and s.step >= t.max_steps) or (t.time_limit > 0 and s.train_seconds >= 60 * t.time_limit)

    def _loop(self) -> bool:
        t, s = self.tcfg, self.state
        n = len(self.data.train)
        if n < t.batch_size:
            raise ConfigError(f"--batch-size {t.batch_size} is larger than the training split ({n} examples).")
        steps_per_epoch = n // t.batch_size
        while s.epoch < t.epochs:
            if self._should_stop()[1]:
                return False
            self.model.train()
            bar = tqdm(total=steps_per_epoch, initial=s.batch, desc=f"epoch {s.epoch + 1}/{t.epochs}", unit="step",
                       disable=not self.progress_bar or None, leave=False)
            tick = time.perf_counter()
            signalled = False  # (an epoch resumed after its last batch runs no step)
            for idx in batch_indices(n, t.batch_size, t.seed, s.epoch, start_batch=s.batch):
                lr = learning_rate(s.step, t.epochs * steps_per_epoch, t.lr, t.lr_schedule, t.warmup_steps)
                for optimizer in self.optimizers.values():
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                loss = self._step(self._train_images[idx], self._train_labels[idx])
                s.batch += 1
                s.step += 1
                s.epoch_loss_sum += loss * t.batch_size
                s.epoch_examples += t.batch_size
                now = time.perf_counter()
                s.epoch_seconds += now - tick
                s.train_seconds += now - tick
                tick = now
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.2f}", img_s=f"{s.epoch_examples / max(s.epoch_seconds, 1e-9):.0f}")
                signalled, spent = self._should_stop()
                if signalled or spent:
                    break
            bar.close()
            if signalled:
                self.save_checkpoint()
                name = signal.Signals(self._stop_signal).name if self._stop_signal else "a signal to another rank"
                raise Interrupted(f"stopped by {name} after step {s.step} (epoch {s.epoch + 1}); the checkpoint in "
                                  f"{self.run_dir} is complete: continue with --resume.")
            if s.batch < steps_per_epoch:  # stopped by --max-steps or --time-limit within the epoch
                if self.ctx.is_main:
                    self.metrics.append(self._epoch_row(partial=True))
                    runs.write_metrics(self.run_dir, self.metrics)
                self.save_checkpoint()
                return False
            row, warnings = None, []
            if self.ctx.is_main:  # the other ranks only train
                row = self._epoch_row(partial=False)
                warnings = self.eval_model.diagnose(row)
                if warnings:
                    row["warnings"] = warnings
                self.metrics.append(row)
                runs.write_metrics(self.run_dir, self.metrics)  # before the checkpoint: see load_checkpoint
            s.epoch += 1
            s.batch = 0
            s.epoch_loss_sum, s.epoch_examples, s.epoch_seconds = 0.0, 0, 0.0
            self.save_checkpoint()
            if row is not None:
                self.log(self._describe(row))
            for warning in warnings:
                self.log(f"warning: {warning}")
        return True

    def _should_stop(self) -> tuple[bool, bool]:
        """(a signal arrived, the budget is spent), agreed across ranks so that all stop at the same step."""
        signalled, spent = distributed.any_rank((self._stop_signal is not None, self._budget_spent()), self.ctx,
                                                self.device)
        return signalled, spent

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        x = self.view.train_batch(images, self.data_gen)  # the global batch, drawn alike on every rank
        x, labels = distributed.shard(x, self.ctx), distributed.shard(labels, self.ctx)
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.tcfg.precision == "bf16"):
                value = self.model.train_step(x, labels, self.state.step, self._update, self.net)
        except ModelDiverged as e:
            raise TrainingDiverged(self._diverged(str(e))) from None
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return value

    def _update(self, player: str, losses: torch.Tensor) -> float:
        """Reduce one player's per-example losses, back-propagate, clip and step its optimizer."""
        assert losses.shape == (losses.shape[0],) and losses.shape[0] > 0, \
            f"loss must be per example, got shape {tuple(losses.shape)}"
        loss = losses.float().mean()
        value = distributed.mean(loss.item(), self.ctx, self.device)  # every rank sees the same value and verdict
        if not math.isfinite(value):
            who = "" if player == "model" else f" of the {player}"
            raise TrainingDiverged(self._diverged(f"the loss{who} became {value}") + "; try a lower --lr or --grad-clip.")
        optimizer = self.optimizers[player]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=False):
            loss.backward()
        if self.tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                           self.tcfg.grad_clip)
        optimizer.step()
        return value

    def _diverged(self, what: str) -> str:
        return (f"{what} at step {self.state.step + 1} (epoch {self.state.epoch + 1}); training stopped and the last "
                f"good checkpoint in {self.run_dir} (step {self._last_saved_step()}) is kept")

    def _last_saved_step(self) -> int | str:
        path = self.run_dir / runs.CHECKPOINT
        if not path.is_file():
            return "none"
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["progress"])["step"]

    def _epoch_row(self, partial: bool) -> dict:
        s = self.state
        self.eval_model.eval()
        val = validation_metrics(self.eval_model, self._val_x, self.data.val.labels, self.device)
        row = {"epoch": s.epoch + 1, "step": s.step, "train_loss": s.epoch_loss_sum / max(s.epoch_examples, 1),
               **{f"val_{k}": v for k, v in val.items()},
               "images_per_s": s.epoch_examples / max(s.epoch_seconds, 1e-9), "epoch_seconds": s.epoch_seconds}
        if partial:
            row["partial"] = True
        return row

    def _describe(self, row: dict) -> str:
        vals = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("val_"))
        return (f"epoch {row['epoch']}/{self.tcfg.epochs}  train_loss={row['train_loss']:.3f}  {vals}  "
                f"{row['images_per_s']:.0f} img/s")

    # --- the end -------------------------------------------------------------------------------
    def finish(self, finished: bool) -> dict:
        """Score the model, draw its pictures and curves, and write summary.json (rank 0 only)."""
        if not self.ctx.is_main:
            return {}
        model = self.eval_model
        model.eval()
        result = evaluate(model, self.data, self.cfg.eval, self.device, progress=self.progress_bar)
        test_x = eval_tensor(model, self.data, "test", 64).to(self.device)
        with isolated_rng(PICTURE_SEED, self.device):
            gen = torch.Generator(device=self.device).manual_seed(PICTURE_SEED)
            for name, grid in model.pictures(test_x, gen).items():
                save_grid(grid, self.run_dir / f"{name}.png")
        plot_curves(self.metrics, self.run_dir / "curves.png", title=f"{model.family} on {self.data.name}")
        s = self.state
        summary = {
            "family": model.family, "kind": model.kind.value, "dataset": self.data.name, "view": model.view,
            "finished": finished, "epochs_completed": s.epoch, "steps": s.step,
            "train_wall_time_s": s.train_seconds,
            "images_per_s": (s.step * self.tcfg.batch_size) / max(s.train_seconds, 1e-9),
            "parameters": sum(p.numel() for p in model.parameters()),
            "device": str(self.device), "eval": result,
        }
        runs.write_json(self.run_dir / runs.SUMMARY, summary)
        return summary


def train_run(cfg: runs.RunConfig, out: Path, resume: bool = False, log: Callable[[str], None] = print,
              progress_bar: bool = False) -> dict:
    """Train (or, with ``resume``, continue) the run ``cfg`` in folder ``out``; returns its summary (an empty
    dict on the ranks other than 0 of a distributed training)."""
    out = Path(out)
    ctx = distributed.init(pick_device(cfg.train.device))  # under torchrun, all ranks meet before any writes
    try:
        data = load_dataset(cfg.train.dataset)
        if cfg.train.subset:
            data = data.subset(cfg.train.subset)
        torch.manual_seed(cfg.train.seed)
        model = runs.build_model(cfg, data.image_shape)
        with runs.training_lock(out) if ctx.is_main else contextlib.nullcontext():
            if ctx.is_main:
                for stale in out.glob(".*.tmp"):  # left by a process killed mid-write; the lock says none writes
                    stale.unlink(missing_ok=True)
            trainer = Trainer(model, out, cfg, data, log=log, progress_bar=progress_bar, ctx=ctx)
            if resume and (out / runs.CHECKPOINT).is_file():
                trainer.load_checkpoint()  # before anything else is written: a damaged checkpoint changes nothing
                trainer.log(f"resuming {out} at epoch {trainer.state.epoch + 1}, step {trainer.state.step}")
            if ctx.active:  # each rank draws the model's own noise (z, epsilon, Langevin) from its own stream
                torch.manual_seed(cfg.train.seed + 7919 * (ctx.rank + 1) + trainer.state.step)
            if ctx.is_main:
                runs.write_json(out / runs.CONFIG, cfg.to_json())
            n_params = sum(p.numel() for p in model.parameters())
            trainer.log(f"training {cfg.family} ({model.kind.value}) on {data.name} [{data.source}], {n_params:,} "
                        f"parameters, device {trainer.device}"
                        + (f" x {ctx.world} processes" if ctx.active else "") + f", run folder {out}")
            return trainer.fit()
    finally:
        if ctx.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
