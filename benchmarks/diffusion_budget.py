"""Benchmark: diffusion and flow matching at fixed CPU budgets, side by side, and against diffusers.

    python benchmarks/diffusion_budget.py --budgets 30 60 --fid-n 10000 --nll-n 1000 --threads 1
    python benchmarks/diffusion_budget.py --budgets 1 --fid-n 500 --nll-n 4 --tag smoke          (a smoke run)

For each family (ddpm, flow: their defaults, unconditional; or FAMILY:PRESET, e.g. ddpm:min-snr) one run trains
in stages: to the first budget (CPU minutes of training), is scored, then resumes to the next budget, and so on;
a budget's scores are those of the weights at that budget. Scores: FID and KID of --fid-n samples (genzoo's
feature space, the float reference) with each sampler in --samplers; sampling seconds per 100 images for each;
the NLL on the first --nll-n test
images (DDPM: the bound and the probability-flow ODE; flow: the ODE). With diffusers installed (a benchmark-only
dependency: pip install diffusers), its UNet2DModel (about the same parameter count) trained with DDPMScheduler
for the same minutes is scored the same way from DDIM-50 samples.

Resumable: every stage writes its figures (and the machine it ran on) to benchmarks/results/diffusion_budget[-TAG].json
and is skipped when there; the runs live in benchmarks/results/diffusion_budget[-TAG]/. Processes given different
--families may run at once: each merges its stages into the file.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from genzoo import runs, storage  # noqa: E402
from genzoo.config import EvalConfig  # noqa: E402
from genzoo.data import load_dataset  # noqa: E402
from genzoo.devices import autocast, describe_machine, resolve_precision  # noqa: E402
from genzoo.evaluate import draw_samples, evaluate, score_images  # noqa: E402
from genzoo.trainer import adam, train_run  # noqa: E402

HERE = Path(__file__).parent
SAVE_EVERY = 300.0  # seconds of training between the diffusers baseline's checkpoints
SAMPLERS = {"ddpm": ["ddim:100", "ddim:20", "dpm++2m:20", "heun:10", "dpm++2m:10"],
            "flow": ["heun:20", "euler:20", "midpoint:10", "heun:10", "euler:10"]}


def parse_sampler(text: str) -> dict:
    name, _, steps = text.partition(":")
    return {"sampler": name, "steps": int(steps)} if steps else {"sampler": name}


def score_samples(model, data, n: int, sampler: dict) -> dict:
    samples, rate = draw_samples(model, n, torch.device("cpu"), 500, False, **sampler)
    return {**sampler, "seconds_per_100": 100 / rate, **score_images(samples, data.name, "float", 500)}


def genzoo_stage(entry: str, budget: float, args, data, log) -> dict:
    """One stage of a genzoo run: ``entry`` is a family (its defaults) or FAMILY:PRESET (e.g. ddpm:min-snr)."""
    family, _, preset = entry.partition(":")
    run_dir = HERE / "results" / f"diffusion_budget{args.tag}" / entry.replace(":", "-")
    resume = (run_dir / runs.CHECKPOINT).is_file()
    train = {"time_limit": budget, "epochs": args.epochs, "final_eval": "skip"}  # the same horizon for every entry
    cfg = (runs.resumed_config(runs.read_config(run_dir), train=train) if resume
           else runs.new_config(family, train=train, preset=preset or None))
    previous = run_dir / runs.SUMMARY
    summary = storage.read_json(previous) if resume and previous.is_file() else None
    if not (summary and (summary["finished"] or summary["train_wall_time_s"] >= 60 * budget)):
        summary = train_run(cfg, run_dir, resume=resume, log=log)  # else trained to this budget, not yet scored
    run = runs.load_run(run_dir)
    out = {"train_minutes": summary["train_wall_time_s"] / 60, "steps": summary["steps"],
           "images_per_s": summary["images_per_s"], "parameters": summary["parameters"],
           "precision": summary.get("precision"), "samplers": []}
    offered = run.model.sample_options[0].choices  # the family's --sampler choices
    for text in [t for t in args.samplers if parse_sampler(t)["sampler"] in offered] if args.samplers \
            else SAMPLERS[family]:
        row = score_samples(run.model, data, args.fid_n, parse_sampler(text))
        log(f"{entry} at {budget:g} min, {text}: FID {row['fid']:.2f}, {row['seconds_per_100']:.1f} s per 100")
        out["samplers"].append(row)
    out["nll"] = score_nll(run, run_dir, budget, args, data)
    return out


def score_nll(run, run_dir: Path, budget: float, args, data) -> dict:
    """The NLL figures of a stage: on the first --nll-n test images, the bound and/or the ODE NLL."""
    ev = evaluate(run.model, data, EvalConfig(n=args.nll_n, ode_steps=args.ode_steps, ode_tol=args.ode_tol,
                                              bound_t=args.bound_t),
                  torch.device("cpu"), progress=False, partial=run_dir / f"nll-{budget:g}.partial.safetensors")
    return {k: v for k, v in ev.items() if "bits_per_dim" in k or k.endswith("estimator") or k == "n_examples"}


def rescore_nll(entry: str, budget: float, stage: dict, args, data, log) -> dict | None:
    """A scored stage's NLL measured again with this command's solver settings (the earlier figures kept under
    "nll_before"): only for the stage whose weights the run folder holds, its last; None (said) for the others."""
    run_dir = HERE / "results" / f"diffusion_budget{args.tag}" / entry.replace(":", "-")
    summary = storage.read_json(run_dir / runs.SUMMARY)
    if abs(summary["train_wall_time_s"] / 60 - stage["train_minutes"]) > 0.01:
        log(f"{entry}@{budget:g}: skipped, {run_dir} holds the weights of {summary['train_wall_time_s'] / 60:.1f} "
            f"minutes, not of this stage, so its NLL cannot be measured again.")
        return None
    nll = score_nll(runs.load_run(run_dir), run_dir, budget, args, data)
    log(f"{entry} at {budget:g} min, NLL again: {nll}")
    return {**stage, "nll": nll, "nll_before": stage["nll"]}


def diffusers_stage(budget: float, args, data, log) -> dict:
    """diffusers' UNet2DModel + DDPMScheduler, L_simple, Adam 1e-3 with clipping, trained for the budget.

    Its forward passes use the arithmetic genzoo's runs use on this machine (``--precision auto``: bf16 autocast
    where bf16 is native, with NCHW tensors), in training and in sampling, so equal minutes buy equal arithmetic;
    the stage records which."""
    try:
        import diffusers
        from diffusers import DDIMScheduler
    except ImportError:
        return {"skipped": "diffusers is not installed (pip install diffusers)"}
    from ddpm_vs_diffusers import diffusers_setup

    folder = HERE / "results" / f"diffusion_budget{args.tag}" / "diffusers"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet, loss_fn = diffusers_setup(32)
    opt = adam(unet.parameters(), torch.device("cpu"), lr=1e-3)  # the trainer's kernel
    g = torch.Generator().manual_seed(0)
    # the trainer's checkpoint format: weights, Adam's moments and the RNG states, so a stage resumes exactly
    # where it stopped (saved every SAVE_EVERY seconds of training and at the budget)
    path, progress = folder / runs.CHECKPOINT, {"step": 0, "seconds": 0.0}
    if path.is_file():
        progress, rng = runs.load_checkpoint(path, unet, None, {"model": opt}, torch.device("cpu"))
        g.set_state(rng["data"])
        torch.set_rng_state(rng["torch"])

    def save():
        runs.save_checkpoint(path, unet, None, {"model": opt}, {"data": g.get_state(), "torch": torch.get_rng_state()},
                             progress)

    cpu = torch.device("cpu")
    precision = resolve_precision("auto", cpu)
    images, saved_at = data.train.images, progress["seconds"]
    while progress["seconds"] < 60 * budget:
        tick = time.perf_counter()
        idx = torch.randint(0, len(images), (128,), generator=g)
        with autocast(precision, cpu):
            loss = loss_fn(images[idx].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        progress = {"step": progress["step"] + 1, "seconds": progress["seconds"] + time.perf_counter() - tick}
        if progress["seconds"] - saved_at > SAVE_EVERY:
            save()
            saved_at = progress["seconds"]
    save()
    seconds = progress["seconds"]
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    scheduler.set_timesteps(50)
    unet.eval()
    out, start = [], time.perf_counter()
    with torch.no_grad(), autocast(precision, cpu):
        gen = torch.Generator().manual_seed(0)
        for s in range(0, args.fid_n, 500):
            x = torch.randn((min(500, args.fid_n - s), 1, 28, 28), generator=gen)
            for t in scheduler.timesteps:
                x = scheduler.step(unet(x, t).sample.float(), t, x).prev_sample
            out.append(((x + 1) / 2).clamp(0, 1))
    rate = args.fid_n / (time.perf_counter() - start)
    row = {"sampler": "ddim", "steps": 50, "seconds_per_100": 100 / rate,
           **score_images(torch.cat(out), data.name, "float", 500)}
    log(f"diffusers at {budget:g} min, ddim:50: FID {row['fid']:.2f}")
    return {"diffusers_version": diffusers.__version__, "train_minutes": seconds / 60, "steps": progress["step"],
            "images_per_s": 128 * progress["step"] / seconds, "precision": precision,
            "parameters": sum(p.numel() for p in unet.parameters()), "samplers": [row]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["ddpm", "flow", "diffusers"],
                   help="ddpm, flow (their defaults), FAMILY:PRESET (e.g. ddpm:min-snr, whose bound the "
                        "min-SNR weighting costs), diffusers")
    p.add_argument("--budgets", nargs="+", type=float, default=[30.0, 60.0], help="training minutes, increasing")
    p.add_argument("--epochs", type=int, default=4,
                   help="epochs of the cosine schedule (the horizon of the runs): about the largest budget's worth "
                        "on this machine, or the last stage trains on an ended schedule (one thread: 4 on an AVX2 "
                        "core, 10 with AVX-512-BF16, where an epoch of the U-Net takes 6 minutes)")
    p.add_argument("--fid-n", type=int, default=10_000)
    p.add_argument("--nll-n", type=int, default=1000)
    p.add_argument("--ode-steps", type=int, default=0, help="0 = the adaptive solver to --ode-tol; N = N uniform RK4 steps")
    p.add_argument("--ode-tol", type=float, default=1e-5)
    p.add_argument("--bound-t", type=int, default=0,
                   help="DDPM: the bound from K stratified steps per image (genzoo eval --bound-t; 0 = all T)")
    p.add_argument("--samplers", nargs="+", default=None,
                   help="NAME:STEPS, each used by the families that have the sampler; default: a set per family")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--rescore-nll", action="store_true",
                   help="measure the NLL of the families' scored stages again (e.g. with another ODE solver); "
                        "only a run's last stage still has its weights (the others are skipped, said)")
    args = p.parse_args()
    args.tag = f"-{args.tag}" if args.tag else ""
    if args.threads:
        torch.set_num_threads(args.threads)
    path = HERE / "results" / f"diffusion_budget{args.tag}.json"
    result = storage.read_json(path) if path.is_file() else {}
    result.update({"benchmark": "diffusion_budget", "machine": describe_machine(),
                   "command": "python benchmarks/diffusion_budget.py " + " ".join(sys.argv[1:])})
    data = load_dataset("mnist")
    stages = result.setdefault("stages", {})
    for family in args.families:  # a family's budgets in turn: at most one unfinished run to carry between machines
        for budget in sorted(args.budgets):
            key = f"{family}@{budget:g}"
            if key in stages and args.rescore_nll and family != "diffusers":
                stage = rescore_nll(family, budget, stages[key], args, data, print)
                if stage is None:
                    continue
            elif key in stages:
                continue
            else:
                stage = (diffusers_stage(budget, args, data, print) if family == "diffusers"
                         else genzoo_stage(family, budget, args, data, print))
                stage = {**stage, "machine": describe_machine(), "date": datetime.date.today().isoformat()}
            # other processes may have written stages of other families meanwhile: write only this stage over
            # what the file holds now
            if path.is_file():
                stages.update(storage.read_json(path).get("stages", {}))
            stages[key] = stage
            storage.write_json(path, result)
    for key, stage in stages.items():
        best = min((r["fid"] for r in stage.get("samplers", [])), default=None)
        print(f"{key:<16} best FID {best if best is None else round(best, 2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
