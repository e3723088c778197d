"""Benchmark: DDPM training throughput, genzoo against diffusers (UNet2DModel + DDPMScheduler), side by side.

Both train epsilon-prediction with L_simple on MNIST-shaped batches at the same batch size, with U-Nets of
matched parameter count (within 5 %), on the same CPU threads. The two are timed in alternating rounds so that
the machine's noise falls on both, and the figure is the ratio of their median images/s.

    pip install diffusers==0.42.1        # a benchmark dependency only
    python benchmarks/ddpm_vs_diffusers.py [--batch-size 128] [--rounds 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genzoo import storage
from genzoo.data import load_dataset
from genzoo.devices import describe_machine
from genzoo.models.ddpm import DDPM, DDPMConfig
from genzoo.trainer import adam

HERE = Path(__file__).parent


def diffusers_setup(width: int):
    from diffusers import DDPMScheduler, UNet2DModel
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(width, 2 * width, 2 * width),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       attention_head_dim=None)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")

    def loss_fn(x_uint8):
        x0 = x_uint8 / 127.5 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],))
        return F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
    return unet, loss_fn


def genzoo_setup(cfg: DDPMConfig):
    model = DDPM(cfg, (1, 28, 28))
    return model, lambda x: model.loss(x).mean()


def images_per_second(module, loss_fn, batches, steps) -> float:
    opt = adam(module.parameters(), torch.device("cpu"), lr=1e-4)  # the trainer's kernel, both sides
    t = time.perf_counter()
    for i in range(steps):
        loss = loss_fn(batches[i % len(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batches[0].shape[0] / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per timed round")
    p.add_argument("--diffusers-width", type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    data = load_dataset("mnist")
    batches = [data.train.images[i * args.batch_size:(i + 1) * args.batch_size].float() for i in range(4)]
    ours, ours_loss = genzoo_setup(DDPMConfig())
    theirs, theirs_loss = diffusers_setup(args.diffusers_width)
    n_ours = sum(q.numel() for q in ours.parameters())
    n_theirs = sum(q.numel() for q in theirs.parameters())
    print(f"parameters: genzoo {n_ours:,}, diffusers {n_theirs:,} (ratio {n_ours / n_theirs:.3f})")
    for module, fn in ((ours, ours_loss), (theirs, theirs_loss)):  # warm-up
        images_per_second(module, fn, batches, 2)
    rates = {"genzoo": [], "diffusers": []}
    for r in range(args.rounds):
        rates["genzoo"].append(images_per_second(ours, ours_loss, batches, args.steps))
        rates["diffusers"].append(images_per_second(theirs, theirs_loss, batches, args.steps))
        print(f"round {r + 1}: genzoo {rates['genzoo'][-1]:.1f} img/s, diffusers {rates['diffusers'][-1]:.1f} img/s")
    med = {k: statistics.median(v) for k, v in rates.items()}
    import diffusers
    result = {"benchmark": "ddpm_vs_diffusers", "date": datetime.date.today().isoformat(),
              "machine": describe_machine(),
              "command": "python benchmarks/ddpm_vs_diffusers.py " + " ".join(sys.argv[1:]),
              "diffusers_version": diffusers.__version__, "batch_size": args.batch_size,
              "parameters": {"genzoo": n_ours, "diffusers": n_theirs},
              "images_per_s_median": med, "images_per_s_rounds": rates,
              "ratio_genzoo_over_diffusers": med["genzoo"] / med["diffusers"], "target_ratio": 1.5}
    out = HERE / "results" / "ddpm_vs_diffusers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    storage.write_json(out, result)
    print(json.dumps({k: result[k] for k in ("parameters", "images_per_s_median", "ratio_genzoo_over_diffusers")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
