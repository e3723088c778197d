"""Score a model by what its density kind offers, in the units of its data view.

Every figure is reported with the split, the number of examples and the view, because likelihoods are only
comparable within one view: nats per image on the fixed binarisation of the ``binary`` view, and both nats
and bits per dimension on the 8-bit ``uint8`` view.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from genzoo import storage, theory
from genzoo.config import EvalConfig
from genzoo.data.datasets import ImageDataset
from genzoo.data.toy import TOY_DATASETS, ToySpec, grid_kl, mode_metrics
from genzoo.data.views import get_view, reports_bits_per_dim
from genzoo.errors import ConfigError, RunError
from genzoo.models.base import DensityKind, GenerativeModel

EVAL_SEED = 0  # the noise of stochastic bounds (ELBO, IWAE) is drawn from this seed, for reproducible figures


@contextmanager
def isolated_rng(seed: int, device: torch.device):
    """Run a block with its own seeded RNG, leaving the caller's RNG streams exactly as they were."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    se = (v.std(unbiased=True) / math.sqrt(len(v))).item() if len(v) > 1 else float("nan")
    return v.mean().item(), se


def eval_tensor(model: GenerativeModel, data: ImageDataset, split: str, n: int = 0) -> torch.Tensor:
    images = data.split(split).images
    if n:
        images = images[:n]
    return get_view(model.view).eval_data(images, split)


@torch.no_grad()
def validation_metrics(model: GenerativeModel, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                       batch_size: int = 500) -> dict:
    """Mean of the model's cheap per-example metrics over x, labels y (seeded, so epochs compare like with like)."""
    totals: dict[str, float] = {}
    with isolated_rng(EVAL_SEED, device):
        for start in range(0, len(x), batch_size):
            for k, v in model.validation_metrics(x[start:start + batch_size].to(device),
                                                  y[start:start + batch_size].to(device)).items():
                assert v.shape == (min(batch_size, len(x) - start),), f"{k} must be per example"
                totals[k] = totals.get(k, 0.0) + v.double().sum().item()
    return {k: v / len(x) for k, v in totals.items()}


def toy_scores(model: GenerativeModel, spec: ToySpec, n: int, device: torch.device) -> dict:
    """Against a toy set's known density: modes covered and high-quality share of n samples, and for an energy
    model the KL from the data to the model normalised on a grid."""
    with isolated_rng(EVAL_SEED, device):
        samples = model.sample(n, torch.Generator(device=device).manual_seed(EVAL_SEED))
    out = mode_metrics(spec, samples)
    out["n_samples"] = n
    if model.kind is DensityKind.UNNORMALISED:
        with torch.no_grad():
            out.update(grid_kl(spec, lambda p: -model.energy(p.float().to(device))))
    return out


def ais_scores(model: GenerativeModel, x: torch.Tensor, cfg: EvalConfig, device: torch.device,
               toy: ToySpec | None) -> dict:
    """log Z of exp(-E) on the data's box by AIS (genzoo.ais), and the test NLL it implies: mean E(x) + log Z.

    The box is [0, 1]^D for images (the density is over the continuous intensities x/255) and, for toy data,
    the square of the grid the KL uses, so both log Z figures can be compared."""
    from genzoo.ais import ais_log_z, geometric_betas

    low, high = (-toy.extent, toy.extent) if toy is not None else (0.0, 1.0)
    with isolated_rng(EVAL_SEED, device):
        est = ais_log_z(lambda z: -model.energy(z), tuple(x.shape[1:]), low, high, chains=cfg.ais_chains,
                        betas=geometric_betas(cfg.ais_temperatures), mcmc_steps=2, step_size=cfg.ais_step,
                        generator=torch.Generator(device=device).manual_seed(EVAL_SEED), device=device)
    with torch.no_grad():
        e = torch.cat([model.energy(x[i:i + 500].to(device)).double().cpu() for i in range(0, len(x), 500)])
    e_mean, e_se = _mean_and_stderr(e)
    return {"nll_ais_nats": e_mean + est["log_z"], "nll_ais_nats_stderr": math.hypot(e_se, est["log_z_stderr"]),
            "log_z_ais": est["log_z"], "log_z_ais_stderr": est["log_z_stderr"], "ais_ess": est["ess"],
            "ais_chains": est["chains"], "ais_temperatures": est["temperatures"], "ais_acceptance": est["acceptance"],
            "ais_box": [low, high]}


def partial_path(result: Path) -> Path:
    """Where an evaluation that will write ``result`` (e.g. RUN/eval-test.json) keeps its progress."""
    return result.with_name(result.stem + ".partial.safetensors")


# Evaluation settings added after partial evaluations were first written, with their defaults: left out of the
# fingerprint at their default, so a partial file written before them stays valid.
ADDED_SETTINGS = {"dequant_draws": 1}


def _fingerprint(model: GenerativeModel, cfg: EvalConfig, dataset: str) -> str:
    """SHA-256 of what decides an evaluation's per-example values: the weights, the settings but the number of
    examples (the values of the first n do not depend on it), the data."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ADDED_SETTINGS or v != ADDED_SETTINGS[k]}
    settings["n"] = None
    h = hashlib.sha256(json.dumps({"family": model.family, "dataset": dataset, "cfg": settings},
                                  sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _resume(partial: Path | None, fingerprint: str, n: int,
            log: Callable[[str], None]) -> dict[str, list[torch.Tensor]]:
    """The per-example values (of at most the first ``n`` examples) that an interrupted evaluation with the same
    fingerprint left in ``partial``, or none."""
    if partial is None or not partial.is_file():
        return {}
    try:
        tensors, meta = storage.load_tensors(partial)
    except RunError as e:
        log(f"{e} Scoring from the first image again.")
        return {}
    if meta.get("fingerprint") != fingerprint:
        log(f"{partial} holds an evaluation of other weights or settings: scoring from the first image again.")
        return {}
    done = {len(t) for t in tensors.values()}
    if len(done) != 1:
        log(f"{partial} is inconsistent: scoring from the first image again.")
        return {}
    done = min(done.pop(), n)
    log(f"continuing the interrupted evaluation in {partial}: {done} images already scored")
    return {k: [t[:done]] for k, t in tensors.items()}


def eval_header(model: GenerativeModel, data: ImageDataset, split: str, n_examples: int) -> dict:
    """What every evaluation result starts with: what was scored, on which data, in which view."""
    return {"family": model.family, "kind": model.kind.value, "dataset": data.name, "split": split,
            "view": model.view, "n_examples": n_examples}


@torch.no_grad()
def evaluate(model: GenerativeModel, data: ImageDataset, cfg: EvalConfig, device: torch.device,
             progress: bool = True, log: Callable[[str], None] | None = None, partial: Path | None = None) -> dict:
    """The metrics the model's kind allows, on ``cfg.split``, as a JSON-ready dict. ``log`` is told, after the
    first batch, how long the whole evaluation will take.

    Each batch draws its noise (the ELBO's z, the IWAE's samples, Hutchinson's probes) from its own seed, so
    the per-example values do not depend on where an evaluation started: with ``partial`` (a safetensors file)
    they are saved after every batch, and an evaluation of the same weights and settings that finds the file
    continues where the interrupted one stopped, with the same result; the file is removed at the end."""
    model.eval()
    x = eval_tensor(model, data, cfg.split, cfg.n)
    dims = x[0].numel()
    out: dict = eval_header(model, data, cfg.split, len(x))
    if data.name in TOY_DATASETS:
        out.update(toy_scores(model, TOY_DATASETS[data.name], cfg.n or 2500, device))
    if model.kind is DensityKind.IMPLICIT:
        out["note"] = "implicit model: no likelihood; judge it by its samples"
        return out
    if model.kind is DensityKind.UNNORMALISED:
        if cfg.ais_chains:
            out.update(ais_scores(model, x, cfg, device, TOY_DATASETS.get(data.name)))
            out["note"] = ("unnormalised model: log Z estimated by annealed importance sampling, so the NLL is an "
                           "estimate (biased low in expectation, as log Z-hat is), not a bound")
        else:
            out["note"] = "unnormalised model: energy only, log Z unknown, so no log-likelihood" + (
                "; the KL is computed with log Z found numerically on a grid" if data.name in TOY_DATASETS else "")
        return out
    batch = 100
    fingerprint = _fingerprint(model, cfg, data.name) if partial is not None else ""
    per_example = _resume(partial, fingerprint, len(x), log or (lambda _: None))
    first = len(next(iter(per_example.values()))[0]) if per_example else 0
    tick = time.perf_counter()
    bar = tqdm(range(first, len(x), batch), desc=f"eval {cfg.split}", unit="batch", disable=not progress or None,
               leave=False)
    for start in bar:
        if start == first + batch and log is not None and len(x) - first > 2 * batch:
            per_batch = time.perf_counter() - tick
            log(f"evaluating {len(x) - first} {cfg.split} images: about "
                f"{per_batch * (len(x) - first) / batch / 60:.1f} minutes in all")
        with isolated_rng(EVAL_SEED + start, device):  # the batch's own noise: resumable, and prefix-consistent
            xb = x[start:start + batch].to(device)
            if model.kind is DensityKind.EXACT:
                per_example.setdefault("nll", []).append(-model.log_prob(xb, **model.likelihood_options(cfg)).cpu())
            else:
                per_example.setdefault("neg_elbo", []).append(-model.elbo(xb, **model.likelihood_options(cfg)).cpu())
                if model.importance_weighted:
                    per_example.setdefault("nll", []).append(-model.log_likelihood_estimate(xb, cfg.iwae_k).cpu())
                if model.ode_likelihood and cfg.ode_nll:
                    per_example.setdefault("nll_ode", []).append(
                        -model.ode_log_prob(xb, **cfg.ode_options()).cpu())
        if partial is not None:
            storage.save_tensors(partial, {k: torch.cat(v) for k, v in per_example.items()},
                                 {"fingerprint": fingerprint})
    if partial is not None:
        partial.unlink(missing_ok=True)
    for key, parts in per_example.items():
        mean, se = _mean_and_stderr(torch.cat(parts))
        out[f"{key}_nats"] = mean
        out[f"{key}_nats_stderr"] = se
        if reports_bits_per_dim(model.view):
            out[f"{key}_bits_per_dim"] = theory.nats_to_bits_per_dim(mean, dims)
    if model.kind is DensityKind.EXACT and model.nll_estimator:
        out["nll_estimator"] = model.nll_estimator.format(solver=ode_solver(cfg), draws=cfg.dequant_draws)
    if model.kind is DensityKind.BOUND and "nll" in per_example:
        out["nll_estimator"] = f"IWAE bound, k={cfg.iwae_k} (an upper bound on the true NLL)"
        out["iwae_k"] = cfg.iwae_k
    if "neg_elbo" in per_example and model.bound_estimator(cfg):
        out["neg_elbo_estimator"] = model.bound_estimator(cfg)
        out["bound_t"] = cfg.bound_t
    if "nll_ode" in per_example:
        out["nll_ode_estimator"] = ("probability-flow ODE, " + ode_solver(cfg) + ", "
                                    + (f"Hutchinson divergence ({cfg.probes} probe(s))" if cfg.probes else
                                       "exact divergence")
                                    + ", uniform dequantisation: an upper bound on the NLL of the 8-bit data in "
                                    "expectation (Jensen over the dequantisation noise; Hutchinson's trace is "
                                    "unbiased), up to the solver's error")
    return out


def ode_solver(cfg: EvalConfig) -> str:
    """The solver of an ODE likelihood, in words (its figures say which)."""
    return (f"RK4 with {cfg.ode_steps} uniform steps" if cfg.ode_steps else
            f"adaptive Dormand-Prince 5(4), tolerance {cfg.ode_tol:g}")


FID_SAMPLES = 10_000  # the number of samples of a reported FID/KID unless asked otherwise (stated with every figure)


def default_reference(model: GenerativeModel) -> str:
    """Bernoulli families are compared with the binarised test split (their samples drawn as Bernoulli pixels);
    every other family with the grey test images."""
    return "binary" if model.view == "binary" else "float"


def draw_samples(model: GenerativeModel, n: int, device: torch.device, batch_size: int = 500,
                 progress: bool = False, **sampler) -> tuple[torch.Tensor, float]:
    """n samples [N x C x H x W] in [0, 1] on the CPU, drawn in seeded batches, and the samples per second."""
    model.eval()
    out = []
    start = time.perf_counter()
    with isolated_rng(EVAL_SEED, device):
        gen = torch.Generator(device=device).manual_seed(EVAL_SEED)
        bar = tqdm(range(0, n, batch_size), desc="sampling", unit="batch", disable=not progress or None, leave=False)
        for s in bar:
            options = {**sampler, "y": sampler["y"][s:s + batch_size]} if "y" in sampler else sampler
            out.append(model.sample(min(batch_size, n - s), gen, **options).float().cpu())
    return torch.cat(out), n / (time.perf_counter() - start)


def sample_quality(model: GenerativeModel, data: ImageDataset, n: int = FID_SAMPLES, device: torch.device | None = None,
                   reference: str | None = None, batch_size: int = 500, progress: bool = False, **sampler) -> dict:
    """FID and KID of n samples against the test split of ``data`` in genzoo's feature space (features.py).

    FID uses the shipped reference statistics of all test images; KID compares the samples' features with the
    test images' features in disjoint blocks of 1,000 and reports its standard error.
    """
    from genzoo import features

    device = device or torch.device("cpu")
    reference = reference or default_reference(model)
    features.reference(data.name, reference)  # refuses a data set without a feature network before any sampling
    given = {k: (v[0].item() if k == "y" else v) for k, v in sampler.items()}  # --class: every sample of one class
    labels = model.scoring_labels(n, device) if "y" not in sampler else None
    if labels is not None:
        sampler = {**sampler, "y": labels}
    samples, rate = draw_samples(model, n, device, batch_size, progress, **sampler)
    if tuple(samples.shape[1:]) != tuple(data.test.images.shape[1:]):
        raise ConfigError(f"samples of shape {tuple(samples.shape[1:])} cannot be scored against {data.name} "
                          f"images of shape {tuple(data.test.images.shape[1:])}.")
    if reference == "binary":  # a Bernoulli model's sample is a draw of its pixel probabilities
        samples = torch.bernoulli(samples.clamp(0, 1), generator=torch.Generator().manual_seed(EVAL_SEED))
    out = {"family": model.family, "kind": model.kind.value, "dataset": data.name, "view": model.view,
           **score_images(samples, data.name, reference, batch_size),
           "sampler": given, "samples_per_s": rate}
    if labels is not None:
        out["labels"] = f"the {len(labels.unique())} classes in turn"
    return out


def score_images(images: torch.Tensor, dataset: str, reference: str, batch_size: int) -> dict:
    """FID and KID of images [N x C x H x W] in [0, 1] against the test split's ``reference`` view."""
    from genzoo import features, quality

    mean, cov, n_ref = features.reference(dataset, reference)
    f = features.features(features.feature_net(dataset), images, batch_size, features.image_shape(dataset))
    return {"fid": quality.frechet_distance(*quality.gaussian_statistics(f), mean, cov), "n_samples": len(images),
            "reference": f"{dataset} test split, {reference} view, {n_ref} images", "reference_view": reference,
            "n_reference": n_ref,
            "feature_net": f"genzoo SmallCNN penultimate layer ({features.FEATURE_DIM} features), test accuracy "
                           f"{features.metadata(dataset)['test_accuracy']}",
            **quality.kid(f, features.reference_features(dataset, reference),
                          generator=torch.Generator().manual_seed(EVAL_SEED))}


def data_quality(data: ImageDataset, n: int, reference: str, batch_size: int = 500) -> dict:
    """FID and KID of the first n training images (in the reference's view) against the test reference: the
    floor a perfect model would reach with n samples (FID is biased upwards at small n)."""
    from genzoo import features

    images = features.reference_images(data, reference, split="train", n=n)
    return {"family": "data", "dataset": data.name, **score_images(images, data.name, reference, batch_size)}
