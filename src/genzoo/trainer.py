"""The one trainer. Nothing in this file knows which family it trains.

A family provides ``loss(x) -> [N]``; the trainer reduces it, steps Adam (with optional gradient clipping and
an EMA of the weights). A family with several players (the GAN's generator and discriminator) names them in
``players`` and plugs its own ``train_step`` in, calling back ``update(player, losses)`` for each optimisation of
a player; the loop, the schedule, the checkpoints and the stopping rules stay the same. The trainer checkpoints
atomically every epoch, resumes exactly, and stops cleanly on SIGINT or SIGTERM (finishing the step, then
saving) or on a non-finite loss (keeping the last good checkpoint).

Resuming is exact on CPU: the data order of an epoch depends only on (seed, epoch), and the checkpoint holds
the torch and data RNG states, so a resumed run takes the same steps as an uninterrupted one.

With ``compile`` the networks' training steps run through ``torch.compile`` (compiled in place, so the state
dict and the checkpoints are those of an eager run); everything else (validation, pictures, the final evaluation)
runs them eagerly.

Launched by torchrun, the same loop trains data-parallel with DistributedDataParallel: see distributed.py for
how the batch is divided, what is agreed across ranks and what only rank 0 does.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from genzoo import distributed, runs, storage
from genzoo.devices import (autocast, channels_last_for, compile_networks, compiler_missing, pick_device,
                            resolve_precision, set_channels_last)
from genzoo.data.datasets import ImageDataset
from genzoo.data.views import batch_indices, get_view
from genzoo.errors import ConfigError, GenzooError, ModelDiverged, RunError, TrainingDiverged
from genzoo.evaluate import eval_header, evaluate, eval_tensor, isolated_rng, validation_metrics
from genzoo.models.base import GenerativeModel
from genzoo.plots import plot_curves, save_grid

PICTURE_SEED = 1234  # the noise behind samples.png and friends
QUICK_VALIDATION = 500  # validation images of a run stopped within its first epoch


def learning_rate(step: int, total_steps: int, base: float, schedule: str, warmup_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
    if warmup_steps and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


def adam(params, device: torch.device, **options) -> torch.optim.Adam:
    """Adam with its fused kernel where torch has one for ``device`` (CPU and CUDA): one pass over each tensor
    instead of the foreach implementation's several. Its update is the same to round-off; on CPU it makes the step
    of the chapter's MLP VAE 1.35x faster (BENCHMARKS.md), whose Adam otherwise costs as much as its backward pass."""
    return torch.optim.Adam(params, fused=device.type in ("cpu", "cuda"), **options)


def ema_decay_at(updates: int, decay: float, warmup: bool) -> float:
    """The EMA decay after ``updates`` updates: fixed, or with the warm-up min(decay, (1 + n) / (10 + n)) (the
    num_updates rule of TensorFlow's ExponentialMovingAverage), so that a short run's average does not lag
    behind its early weights (0.999 alone still remembers the random initialisation after a thousand steps)."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


def update_ema(ema: AveragedModel, model: torch.nn.Module) -> None:
    """One EMA update of parameters and buffers, except spectral normalisation's power-iteration vectors (the _u
    and _v buffers of its parametrization): those are an estimator's state, not a statistic. Averaged, they are
    neither unit nor singular vectors, sigma = u^T W v comes out far too small, and the averaged network is divided
    by it (a GAN's EMA discriminator then scored critics in the thousands). The average takes the live model's
    vectors instead: its weights average the recent ones, whose leading singular vectors are nearly the same."""
    ema.update_parameters(model)
    live = dict(model.named_buffers())
    with torch.no_grad():
        for name, buffer in ema.module.named_buffers():
            parts = name.split(".")
            if "parametrizations" in parts and parts[-1] in ("_u", "_v"):
                buffer.copy_(live[name])


class Interrupted(GenzooError):
    exit_code = 130


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
    sync_every = 25  # optimizer steps between the agreements of the ranks of a distributed training
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
        self.precision = resolve_precision(self.tcfg.precision, self.device)
        self.channels_last = channels_last_for(self.precision, self.device)
        set_channels_last(model, self.channels_last)
        self.model = model.to(self.device)
        # what runs the loss methods: the DDP wrapper (which averages gradients across ranks) or the model
        self.net = distributed.wrap(self.model, ctx, self.device, len(model.players), model.ddp_broadcast_buffers)
        self.view = get_view(model.view)
        self.optimizers = {player: adam(self.model.player_parameters(player), self.device, lr=self.tcfg.lr,
                                        weight_decay=self.tcfg.weight_decay, **model.optimizer_options)
                           for player in model.players}
        self.ema = (AveragedModel(self.model, multi_avg_fn=self._ema_average, use_buffers=True)
                    if self.tcfg.ema_decay > 0 else None)
        self.compiled = self._compile() if self.tcfg.compile else []  # after the EMA's copy: it stays eager
        self.data_gen = torch.Generator(device=self.device).manual_seed(self.tcfg.seed + 1)
        self.state = Progress()
        self.metrics: list[dict] = []
        self._stop_signal: int | None = None
        self._pending_loss = 0.0  # the sum of this rank's step losses since the ranks last agreed
        self._nonfinite: str | None = None  # what went non-finite on this rank, until the ranks agree to stop
        self._val_x = eval_tensor(model, data, "val")
        self._train_images = data.train.images.to(self.device)
        self._train_labels = data.train.labels.to(self.device)

    def _compile(self) -> list[str]:
        missing = compiler_missing(self.device)
        if missing:
            raise ConfigError(f"--compile needs {missing}, which this machine lacks; train without --compile.")
        return compile_networks(self.model)

    def _eager(self) -> contextlib.AbstractContextManager:
        """Validation, pictures and the final evaluation run the networks eagerly: compiling their other shapes
        and modes would cost more than it saves."""
        return torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext()

    def _ema_average(self, ema_params: list, params: list, num_averaged: torch.Tensor) -> None:
        """ema <- decay * ema + (1 - decay) * weights, with the decay of ``ema_decay_at`` after num_averaged updates."""
        decay = ema_decay_at(int(num_averaged), self.tcfg.ema_decay, self.tcfg.ema_warmup)
        get_ema_multi_avg_fn(decay)(ema_params, params, num_averaged)

    @property
    def eval_model(self) -> GenerativeModel:
        """The weights that sample and get scored: the EMA's when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # --- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if not self.ctx.is_main:  # the ranks hold the same weights and optimizer states; rank 0 writes
            return
        rng = {"torch": torch.get_rng_state(), "data": self.data_gen.get_state()}
        if self.device.type == "cuda":
            rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        runs.save_checkpoint(self.run_dir / runs.CHECKPOINT, self.model, self.ema, self.optimizers, rng,
                             asdict(self.state))
        storage.save_tensors(self.run_dir / runs.MODEL, self.eval_model.state_dict())

    def load_checkpoint(self) -> None:
        path = self.run_dir / runs.CHECKPOINT
        progress, rng = runs.load_checkpoint(path, self.model, self.ema, self.optimizers, self.device)
        try:
            self.state = Progress(**progress)
            torch.set_rng_state(rng["torch"])
            self.data_gen.set_state(rng["data"].to(torch.uint8))
            if self.device.type == "cuda":
                torch.cuda.set_rng_state_all([rng[f"cuda.{i}"] for i in range(torch.cuda.device_count())])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise RunError(f"{path} does not fit this run ({str(e).splitlines()[0]}).") from None
        # Lines for epochs the checkpoint does not cover (a crash between the two writes) are redone.
        self.metrics = [r for r in runs.read_metrics(self.run_dir) if r.get("epoch", 0) <= self.state.epoch
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

    def _agree(self) -> tuple[bool, bool]:
        """One all-reduce that agrees across ranks on the mean loss of the steps since the last agreement, on a
        non-finite loss, on a signal and on the time limit; returns (a signal arrived, the budget is spent:
        --max-steps or --time-limit reached), the same on every rank."""
        t, s = self.tcfg, self.state
        pending, (signalled, over_time, bad) = distributed.agree(
            self._pending_loss, (self._stop_signal is not None,
                                 t.time_limit > 0 and s.train_seconds >= 60 * t.time_limit,
                                 self._nonfinite is not None), self.ctx, self.device)
        if bad or not math.isfinite(pending):
            raise TrainingDiverged(self._diverged(self._nonfinite or "the loss became non-finite on another process")
                                   + "; try a lower --lr or --grad-clip.")
        s.epoch_loss_sum += pending * t.batch_size
        self._pending_loss = 0.0
        return signalled, over_time or (bool(t.max_steps) and s.step >= t.max_steps)

    def _loop(self) -> bool:
        t, s = self.tcfg, self.state
        n = len(self.data.train)
        if n < t.batch_size:
            raise ConfigError(f"--batch-size {t.batch_size} is larger than the training split ({n} examples).")
        steps_per_epoch = n // t.batch_size
        # one process agrees with itself at no cost, so it checks every step; ranks of a distributed run every k
        sync_every = self.sync_every if self.ctx.active else 1
        spent = self._agree()[1]
        while s.epoch < t.epochs:
            if spent:
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
                self._pending_loss += loss
                s.epoch_examples += t.batch_size
                now = time.perf_counter()
                s.epoch_seconds += now - tick
                s.train_seconds += now - tick
                tick = now
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.2f}", img_s=f"{s.epoch_examples / max(s.epoch_seconds, 1e-9):.0f}")
                if s.step % sync_every == 0 or s.batch == steps_per_epoch or (t.max_steps and s.step >= t.max_steps):
                    signalled, spent = self._agree()
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

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        x = self.view.train_batch(images, self.data_gen)  # the global batch, drawn alike on every rank
        x, labels = distributed.shard(x, self.ctx), distributed.shard(labels, self.ctx)
        try:
            with autocast(self.precision, self.device):
                value = self.model.train_step(x, labels, self.state.step, self._update, self.net)
        except ModelDiverged as e:
            raise TrainingDiverged(self._diverged(str(e))) from None
        except Exception as e:  # torch.compile's failures (no compiler, a failed build) are one sentence
            if not (self.compiled and type(e).__module__.startswith(("torch._dynamo", "torch._inductor"))):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            kept = ("the run's last checkpoint is unchanged" if (self.run_dir / runs.CHECKPOINT).is_file()
                    else "no checkpoint was written yet")
            raise ConfigError(f"torch.compile failed ({first[:200]}); train without --compile ({kept}).") from None
        if self.ema is not None:
            update_ema(self.ema, self.model)
        return value

    def _update(self, player: str, losses: torch.Tensor) -> float:
        """Reduce one player's per-example losses, back-propagate, clip and step its optimizer."""
        assert losses.shape == (losses.shape[0],) and losses.shape[0] > 0, \
            f"loss must be per example, got shape {tuple(losses.shape)}"
        loss = losses.float().mean()
        value = loss.item()  # this rank's; the ranks agree on the logged loss and on stopping in _agree
        if not math.isfinite(value) and self._nonfinite is None:
            who = "" if player == "model" else f" of the {player}"
            self._nonfinite = f"the loss{who} became {value}"
            if not self.ctx.active:  # alone, stop at once; ranks stop together at their next agreement
                self._agree()
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
                f"good checkpoint in {self.run_dir} (step {runs.checkpoint_step(self.run_dir / runs.CHECKPOINT)}) is kept")

    def _epoch_row(self, partial: bool) -> dict:
        s = self.state
        self.eval_model.eval()
        # A run stopped inside its first epoch is a smoke run: its validation line uses the first
        # QUICK_VALIDATION images, not all of them (the row says how many).
        n = QUICK_VALIDATION if partial and s.epoch == 0 else len(self._val_x)
        with self._eager():
            val = validation_metrics(self.eval_model, self._val_x[:n], self.data.val.labels[:n], self.device)
        row = {"epoch": s.epoch + 1, "step": s.step, "train_loss": s.epoch_loss_sum / max(s.epoch_examples, 1),
               **{f"val_{k}": v for k, v in val.items()},
               "images_per_s": s.epoch_examples / max(s.epoch_seconds, 1e-9), "epoch_seconds": s.epoch_seconds}
        if partial:
            row["partial"] = True
        if n < len(self._val_x):
            row["val_examples"] = n
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
        with self._eager():
            return self._finish(finished)

    def _finish(self, finished: bool) -> dict:
        model = self.eval_model
        model.eval()
        s = self.state
        mode = self.tcfg.final_eval
        if mode == "auto":  # a smoke run is not kept waiting by an evaluation many times longer than its training
            mode = "full" if s.epoch >= 1 else "quick"
        quick = mode != "full"
        if model.fits_after_training:
            model.fit_after_training(eval_tensor(model, self.data, "train").to(self.device))
            storage.save_tensors(self.run_dir / runs.MODEL, model.state_dict())
        tick = time.perf_counter()
        draw_pictures(model, self.data, self.run_dir, self.device, quick)
        picture_seconds = time.perf_counter() - tick
        if mode == "quick" and model.quick_eval is None:
            mode = "skip"
        if mode == "skip":
            why = ("--final-eval skip" if self.tcfg.final_eval == "skip"
                   else f"a short run, and the {model.family} family's likelihood is costly")
            result = {**eval_header(model, self.data, self.cfg.eval.split, 0),
                      "note": f"final evaluation skipped ({why}); score the run with `genzoo eval {self.run_dir}`"}
        else:
            ecfg = self.cfg.eval
            if mode == "quick":
                cap = {k: (max if k.endswith("_tol") else min)(v, getattr(ecfg, k) or v)  # the cheaper of the two
                       for k, v in model.quick_eval.items()}
                ecfg = dataclasses.replace(ecfg, **cap)
                self.log(f"a short run: quick final evaluation ({', '.join(f'{k}={v}' for k, v in cap.items())}); "
                         f"`genzoo eval {self.run_dir}` gives the full one")
            result = evaluate(model, self.data, ecfg, self.device, progress=self.progress_bar, log=self.log)
            result["final_eval"] = mode
        plot_curves(self.metrics, self.run_dir / "curves.png", title=f"{model.family} on {self.data.name}")
        summary = {
            "family": model.family, "kind": model.kind.value, "dataset": self.data.name, "view": model.view,
            "finished": finished, "epochs_completed": s.epoch, "steps": s.step,
            "train_wall_time_s": s.train_seconds,
            "images_per_s": (s.step * self.tcfg.batch_size) / max(s.train_seconds, 1e-9),
            "parameters": sum(p.numel() for p in model.parameters()),
            "device": str(self.device), "precision": self.precision, "eval": result, "picture_seconds": picture_seconds,
        }
        storage.write_json(self.run_dir / runs.SUMMARY, summary)
        return summary


def draw_pictures(model: GenerativeModel, data: ImageDataset, folder: Path, device: torch.device,
                  quick: bool = False) -> list[str]:
    """Draw the family's pictures (samples.png and the rest, from the first 64 test images and fixed noise) into
    ``folder``; ``quick`` draws fewer sampler steps and leaves out the costly ones. Returns the file names."""
    test_x = eval_tensor(model, data, "test", 64).to(device)
    written = []
    with isolated_rng(PICTURE_SEED, device):
        gen = torch.Generator(device=device).manual_seed(PICTURE_SEED)
        for name, grid in model.pictures(test_x, gen, quick=quick).items():
            save_grid(grid, folder / f"{name}.png")
            written.append(f"{name}.png")
    return written


def train_run(cfg: runs.RunConfig, out: Path, resume: bool = False, log: Callable[[str], None] = print,
              progress_bar: bool = False) -> dict:
    """Train (or, with ``resume``, continue) the run ``cfg`` in folder ``out``; returns its summary (an empty
    dict on the ranks other than 0 of a distributed training)."""
    out = Path(out)
    ctx = distributed.init(pick_device(cfg.train.device))  # under torchrun, all ranks meet before any writes
    try:
        data = runs.run_data(cfg)
        if cfg.train.subset:
            data = data.subset(cfg.train.subset)
        torch.manual_seed(cfg.train.seed)
        model = runs.build_model(cfg, data.image_shape)
        fine_tune = bool(cfg.train.init_from) and not (resume and (out / runs.CHECKPOINT).is_file())
        if fine_tune:  # a resumed run's weights come from its checkpoint, and its config holds the digest
            digest = runs.start_from(model, cfg.model, cfg.train.init_from)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_digest=digest))
        with storage.training_lock(out) if ctx.is_main else contextlib.nullcontext():
            if ctx.is_main:
                for stale in out.glob(".*.tmp"):  # left by a process killed mid-write; the lock says none writes
                    stale.unlink(missing_ok=True)
            trainer = Trainer(model, out, cfg, data, log=log, progress_bar=progress_bar, ctx=ctx)
            if resume and (out / runs.CHECKPOINT).is_file():
                trainer.load_checkpoint()  # before anything else is written: a damaged checkpoint changes nothing
                spent = trainer.state.train_seconds / 60
                if cfg.train.time_limit and spent >= cfg.train.time_limit:
                    raise ConfigError(f"{out} has trained {spent:.1f} minutes already, and --time-limit counts the "
                                      f"minutes of every sitting: give more than {spent:.1f} to train on.")
                trainer.log(f"resuming {out} at epoch {trainer.state.epoch + 1}, step {trainer.state.step}, after "
                            f"{spent:.1f} minutes of training")
            if ctx.active:  # each rank draws the model's own noise (z, epsilon, Langevin) from its own stream
                torch.manual_seed(cfg.train.seed + 7919 * (ctx.rank + 1) + trainer.state.step)
            if ctx.is_main:
                storage.write_json(out / runs.CONFIG, cfg.to_json())
            n_params = sum(p.numel() for p in model.parameters())
            chosen = " (auto)" if cfg.train.precision == "auto" else ""
            trainer.log(f"training {cfg.family} ({model.kind.value}) on {data.name} [{data.source}], {n_params:,} "
                        f"parameters, device {trainer.device}, precision {trainer.precision}{chosen}, layout "
                        f"{'channels-last' if trainer.channels_last else 'NCHW'}"
                        + (", compiled (torch.compile: the first steps wait for it)" if trainer.compiled else "")
                        + (f" x {ctx.world} processes" if ctx.active else "") + f", run folder {out}")
            if fine_tune:
                trainer.log(f"starting from the weights of {cfg.train.init_from}")
            return trainer.fit()
    finally:
        if ctx.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
