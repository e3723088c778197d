"""Benchmark: training recipes of one family group side by side at one fixed CPU budget.

    python benchmarks/recipes.py --study diffusion --images 38400 --fid-n 1000 --threads 1
    python benchmarks/recipes.py --study gan --images 76800 --fid-n 2000 --threads 1
    python benchmarks/recipes.py --study ebm --images 25600 --fid-n 500 --threads 1
    python benchmarks/recipes.py --study pixelcnn --images 38400 --fid-n 1000 --threads 1
    python benchmarks/recipes.py --study realnvp --images 76800 --fid-n 1000 --threads 1
    python benchmarks/recipes.py --images 256 --fid-n 100 --tag smoke --variants flow ddpm-v

Each variant is a family and a few settings changed from its defaults (STUDIES below, or NAME=FAMILY:key=value,...
on the command line). Every variant of a study trains on the same number of training images (--images; steps =
images / batch size) from the same seed: with one network for all, that is the same CPU work, and unlike a time
limit it does not depend on what else the shared machine runs. A constant learning rate after the warm-up (if the
family has one), and the EMA with warm-up where a variant has one. Then each draws --fid-n samples (the
diffusion families with their ~20-evaluation solver: ddpm DPM-Solver++(2M), 20 steps; flow Heun, 10 steps = 19
evaluations; a GAN in one pass; an EBM by SGLD from noise for its own --sample-steps; a PixelCNN pixel by pixel)
and is scored by FID/KID in genzoo's feature space (float reference; binary for a Bernoulli PixelCNN, whose samples
are binary), a class-conditional variant on its conditional model, every class in turn (plain conditioning, w = 1),
as `genzoo eval --fid` scores it. The last validation figures of each run are kept too (a likelihood family's NLL).

Resumable: each variant's figures go to benchmarks/results/STUDY_recipes[-TAG].json as it finishes and a variant
already there is skipped; the runs live in benchmarks/results/STUDY_recipes[-TAG]/.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from genzoo import runs, storage  # noqa: E402
from genzoo.config import TrainConfig  # noqa: E402
from genzoo.data import load_dataset  # noqa: E402
from genzoo.devices import describe_machine  # noqa: E402
from genzoo.evaluate import sample_quality, score_images  # noqa: E402
from genzoo.trainer import train_run  # noqa: E402

HERE = Path(__file__).parent
SOLVER = {"ddpm": {"sampler": "dpm++2m", "steps": 20}, "flow": {"sampler": "heun", "steps": 10}}
STUDIES = {  # study: {name: (family, settings changed from the family's defaults)}
    "diffusion": {
        "ddpm-eps": ("ddpm", {}),
        "ddpm-v": ("ddpm", {"pred": "v"}),
        "ddpm-eps-minsnr5": ("ddpm", {"min_snr_gamma": 5.0}),
        "flow": ("flow", {}),
        "flow-logitnormal": ("flow", {"time_sampling": "logit-normal"}),
        "flow-lr3e-3": ("flow", {"lr": 3e-3}),
        "flow-batch64": ("flow", {"batch_size": 64}),
        # diffusers' UNet2DModel (about the same parameter count) + DDPMScheduler, trained like ddpm-eps (Adam 1e-3,
        # 200 warm-up steps, clipping at 1, the same EMA) and sampled with its DPM-Solver++(2M), 20 steps
        "diffusers": ("diffusers", {}),
    },
    # the GAN recipes of the zoo issue: an EMA of the weights (the generator's is what samples; Karras et al. 2018,
    # Brock et al. 2019), the hinge loss with spectral normalisation in the discriminator (Miyato et al. 2018)
    "gan": {
        "gan": ("gan", {}),
        "gan-ema": ("gan", {"ema_decay": 0.999}),
        "gan-hinge-sn": ("gan", {"loss": "hinge", "spectral_norm": True}),
        "gan-hinge-sn-ema": ("gan", {"loss": "hinge", "spectral_norm": True, "ema_decay": 0.999}),
    },
    # the EBM recipes of the zoo issue. Each variant samples as its users would: SGLD from uniform noise for the
    # model's own --sample-steps. The defaults train on a replay buffer (Du & Mordatch 2019) and sample with 200
    # steps; "short-run" trains every chain from noise for K steps and samples with the same K (Nijkamp et al.
    # 2019): the model learns the K-step sampler it will be used with, and needs no buffer.
    "ebm": {
        "ebm": ("ebm", {}),
        "ebm-sgld40": ("ebm", {"sgld_steps": 40}),
        "ebm-shortrun40": ("ebm", {"reinit": 1.0, "sgld_steps": 40, "sample_steps": 40, "buffer_size": 1}),
        "ebm-shortrun60": ("ebm", {"reinit": 1.0, "sgld_steps": 60, "sample_steps": 60, "buffer_size": 1}),
        # a persistent buffer with a small, smooth net (Lippe's UvA tutorial 8 on MNIST): each pixel's SGLD gradient
        # clamped, the training images noised a little, chains from noise for 256 steps to sample
        "ebm-small-clamp": ("ebm", {"channels": 16, "hidden": 64, "sgld_steps": 60, "buffer_size": 8192,
                                    "grad_clamp": 0.03, "data_noise": 0.005, "sample_steps": 256}),
        "ebm-clamp": ("ebm", {"sgld_steps": 60, "buffer_size": 8192, "grad_clamp": 0.03, "data_noise": 0.005,
                              "sample_steps": 256}),
    },
    # the class-conditional gated PixelCNN (van den Oord et al. 2016, section 2.3) against the unconditional one:
    # what the label buys in -log P(x | y), what dropping it 10 % of the time costs the unconditional log P(x)
    "pixelcnn": {
        "pixelcnn": ("pixelcnn", {}),
        "pixelcnn-class": ("pixelcnn", {"class_cond": True}),
    },
    # RealNVP's recipes for the likelihood issue, from the zoo's (32-channel coupling nets with ActNorm): the
    # learned dequantisation of Flow++ (Ho et al. 2019) against uniform noise, and twice the width
    "realnvp": {
        "realnvp-32": ("realnvp", {"hidden": 32, "actnorm": True}),
        "realnvp-32-vardeq": ("realnvp", {"hidden": 32, "actnorm": True, "dequantisation": "variational"}),
        "realnvp-64": ("realnvp", {"hidden": 64, "actnorm": True}),
    },
}
TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)


def parse_variant(text: str, recipes: dict) -> tuple[str, tuple[str, dict]]:
    """NAME (one of the study's recipes) or NAME=FAMILY:key=value,key=value (values as JSON numbers or strings)."""
    if "=" not in text.partition(":")[0]:
        return text, recipes[text]
    name, _, spec = text.partition("=")
    family, _, settings = spec.partition(":")
    changes = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        try:
            changes[key] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            changes[key] = value
    return name, (family, changes)


def run_diffusers(args, data, log) -> dict:
    """diffusers' UNet2DModel + DDPMScheduler at genzoo's DDPM recipe, for the same number of training images."""
    import time

    import diffusers
    from ddpm_vs_diffusers import diffusers_setup
    from diffusers import DPMSolverMultistepScheduler

    from genzoo.trainer import adam, ema_decay_at, learning_rate

    torch.manual_seed(0)
    unet, loss_fn = diffusers_setup(32)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    opt = adam(unet.parameters(), torch.device("cpu"), lr=1e-3)  # the trainer's kernel
    g = torch.Generator().manual_seed(0)
    images, steps = data.train.images, args.images // 128
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, 1e-3, "constant", 200)
        loss = loss_fn(images[torch.randint(0, len(images), (128,), generator=g)].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = ema_decay_at(step, 0.999, True)
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.is_floating_point():
                    ema[k].mul_(decay).add_(v, alpha=1 - decay)
                else:
                    ema[k].copy_(v)
    seconds = time.perf_counter() - start
    unet.load_state_dict(ema)
    unet.eval()
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                            algorithm_type="dpmsolver++", solver_order=2)
    out, tick = [], time.perf_counter()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for s in range(0, args.fid_n, 500):
            scheduler.set_timesteps(20)
            x = torch.randn((min(500, args.fid_n - s), 1, 28, 28), generator=gen)
            for t in scheduler.timesteps:
                x = scheduler.step(unet(x, t).sample, t, x).prev_sample
            out.append(((x + 1) / 2).clamp(0, 1))
    rate = args.fid_n / (time.perf_counter() - tick)
    scores = score_images(torch.cat(out), data.name, "float", 500)
    log(f"diffusers: {steps} steps, FID {scores['fid']:.2f}")
    return {"family": "diffusers", "diffusers_version": diffusers.__version__, "changes": {}, "steps": steps,
            "train_minutes": seconds / 60, "images_per_s": steps * 128 / seconds,
            "parameters": sum(p.numel() for p in unet.parameters()),
            "solver": {"sampler": "dpm++2m (diffusers DPMSolverMultistepScheduler)", "steps": 20},
            "seconds_per_100": 100 / rate, **scores, "date": datetime.date.today().isoformat()}


def run_variant(name: str, family: str, changes: dict, args, data, log) -> dict:
    if family == "diffusers":
        return run_diffusers(args, data, log)
    folder = HERE / "results" / f"{args.study}_recipes{args.tag}" / name
    train = {"epochs": 100, "lr_schedule": "constant", "final_eval": "skip",
             **({"ema_warmup": True} if changes.get("ema_decay") else {}),
             **{k: v for k, v in changes.items() if k in TRAIN_KEYS}}
    model = {k: v for k, v in changes.items() if k not in TRAIN_KEYS}
    steps = args.images // train.get("batch_size", runs.new_config(family).train.batch_size)
    resume = (folder / runs.CHECKPOINT).is_file()
    cfg = (runs.resumed_config(runs.read_config(folder), train={"time_limit": 0.0, "max_steps": steps}) if resume
           else runs.new_config(family, model=model, train={**train, "max_steps": steps}))
    summary = train_run(cfg, folder, resume=resume, log=log)
    run = runs.load_run(folder)
    solver = SOLVER.get(family, {})
    scores = sample_quality(run.model, data, args.fid_n, torch.device("cpu"), **solver)
    validation = {k: v for k, v in runs.read_metrics(folder)[-1].items() if k.startswith("val_")}
    log(f"{name}: {summary['steps']} steps, FID {scores['fid']:.2f}")
    return {"family": family, "changes": changes, "steps": summary["steps"],
            "train_minutes": summary["train_wall_time_s"] / 60, "images_per_s": summary["images_per_s"],
            "parameters": summary["parameters"], "solver": solver, "seconds_per_100": 100 / scores["samples_per_s"],
            "validation": validation, **{k: v for k, v in scores.items() if k not in ("sampler", "samples_per_s")},
            "date": datetime.date.today().isoformat()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=list(STUDIES), default="diffusion")
    p.add_argument("--variants", nargs="+", default=None, help="default: every recipe of the study")
    p.add_argument("--images", type=int, default=38_400, help="training images of every variant (300 steps of 128)")
    p.add_argument("--fid-n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tag", default="")
    args = p.parse_args()
    args.tag = f"-{args.tag}" if args.tag else ""
    if args.threads:
        torch.set_num_threads(args.threads)
    recipes = STUDIES[args.study]
    path = HERE / "results" / f"{args.study}_recipes{args.tag}.json"
    result = storage.read_json(path) if path.is_file() else {}
    result.update({"benchmark": f"{args.study}_recipes", "machine": describe_machine(), "images": args.images,
                   "fid_n": args.fid_n, "command": "python benchmarks/recipes.py " + " ".join(sys.argv[1:])})
    data = load_dataset("mnist")
    variants = result.setdefault("variants", {})
    for text in args.variants or list(recipes):
        name, (family, changes) = parse_variant(text, recipes)
        if name not in variants:
            variants[name] = run_variant(name, family, changes, args, data, print)
            storage.write_json(path, result)
    for name, row in variants.items():
        print(f"{name:<22} {row['steps']:>6} steps  FID {row['fid']:8.2f}  KID {row['kid']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
