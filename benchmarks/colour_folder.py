"""Benchmark: a family trained on a folder of colour images, end to end, as a user would run it.

    python benchmarks/colour_folder.py --minutes 30 --threads 1                 (makes the folder if absent)
    python benchmarks/colour_folder.py --minutes 1 --images 600 --tag smoke --fid-n 200

With no folder of one's own at hand (and no network here for CIFAR-10), the script draws one: --images PNG files
of coloured shapes (discs, squares, triangles in six colours on textured grounds, 40-56 px, so that scaling and
cropping to 32 x 32 happen), one subfolder per colour and shape (18 classes). Then, with genzoo's own commands:
`genzoo features train FOLDER` (the feature network of FID/KID for this domain), `genzoo train FAMILY --dataset
FOLDER --time-limit MINUTES`, and `genzoo eval RUN --fid`. Figures go to
benchmarks/results/colour_folder[-TAG].json; the run and its samples.png to benchmarks/results/colour_folder[-TAG]/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from genzoo.devices import describe_machine

HERE = Path(__file__).parent
COLOURS = {"red": (215, 40, 40), "green": (40, 180, 70), "blue": (40, 80, 215), "yellow": (230, 200, 40),
           "magenta": (200, 50, 190), "cyan": (40, 190, 200)}
SHAPES = ("disc", "square", "triangle")


def draw_folder(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for k in range(n):
        colour, shape = list(COLOURS)[k % len(COLOURS)], SHAPES[(k // len(COLOURS)) % len(SHAPES)]
        size = int(rng.integers(40, 57))
        ground = rng.integers(0, 60, 3)
        noise = rng.normal(0, 8, (size, size, 3))
        canvas = Image.fromarray(np.clip(ground + noise, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(canvas)
        r = rng.uniform(0.18, 0.32) * size
        cx, cy = rng.uniform(r + 2, size - r - 2, 2)
        fill = tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in COLOURS[colour])
        if shape == "disc":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        folder = root / f"{colour}-{shape}"
        folder.mkdir(parents=True, exist_ok=True)
        canvas.save(folder / f"{k:05d}.png")


def genzoo(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "genzoo", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"genzoo {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", type=Path, default=None, help="a folder of your own (default: draw the shapes)")
    p.add_argument("--images", type=int, default=6000)
    p.add_argument("--family", default="flow")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--epochs", type=int, default=1000, help="passes over the folder (default: so many that the "
                   "time limit ends the training)")
    p.add_argument("--feature-epochs", type=int, default=5)
    p.add_argument("--fid-n", type=int, default=2000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tag", default="")
    args = p.parse_args()
    tag = f"-{args.tag}" if args.tag else ""
    out = HERE / "results" / f"colour_folder{tag}"
    folder = args.folder or out / "shapes"
    if args.folder is None and not folder.is_dir():
        draw_folder(folder, args.images)
    if args.threads:
        import os
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    features = genzoo("features", "train", str(folder), "--epochs", str(args.feature_epochs))
    run = out / args.family
    resume = ["--resume"] if (run / "checkpoint.safetensors").is_file() else []
    genzoo("train", args.family, "--dataset", str(folder), "--time-limit", str(args.minutes), "--out", str(run),
           "--epochs", str(args.epochs),
           "--final-eval", "quick", *resume)
    genzoo("eval", str(run), "--fid", "--n", str(args.fid_n))
    summary = json.loads((run / "summary.json").read_text())
    fid = json.loads((run / "eval-fid.json").read_text())
    result = {"benchmark": "colour_folder", "machine": describe_machine(), "date": datetime.date.today().isoformat(),
              "command": "python benchmarks/colour_folder.py " + " ".join(sys.argv[1:]), "folder": str(folder),
              "features": features.strip(), "family": args.family, "train_minutes": summary["train_wall_time_s"] / 60,
              "steps": summary["steps"], "images_per_s": summary["images_per_s"], "eval": summary["eval"],
              "fid": fid["fid"], "kid": fid["kid"], "fid_samples": fid["n_samples"]}
    (HERE / "results" / f"colour_folder{tag}.json").write_text(json.dumps(result, indent=2))
    print(f"{args.family} on {folder}: {summary['steps']} steps in {result['train_minutes']:.1f} min, "
          f"FID {fid['fid']:.2f} ({fid['n_samples']} samples); samples in {run / 'samples.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
