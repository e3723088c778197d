"""Pictures: image grids (Pillow) and training curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genzoo.errors import DataError
from genzoo.storage import atomic_write


def read_image(path: Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """One image file as uint8 pixels [C x H x W] of the given shape (grayscale for C = 1, else RGB)."""
    c, h, w = shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist.") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path} cannot be read as an image ({e}).") from None
    if arr.shape[:2] != (h, w):
        raise DataError(f"{path} is {arr.shape[1]}x{arr.shape[0]} pixels; this model takes {w}x{h} images.")
    x = torch.from_numpy(arr.copy())
    return x[None] if c == 1 else x.permute(2, 0, 1)


def grid_image(images: torch.Tensor, pad: int = 2, scale: int = 2) -> Image.Image:
    """[rows x cols x C x H x W] in [0, 1] -> one PIL image, padded, upscaled (nearest) for visibility."""
    if images.dim() != 5:
        raise ValueError(f"expected [rows x cols x C x H x W], got shape {tuple(images.shape)}")
    rows, cols, c, h, w = images.shape
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.float32)
    x = images.detach().float().clamp(0, 1).cpu().permute(0, 1, 3, 4, 2).numpy()  # (rows, cols, H, W, C)
    for r in range(rows):
        for k in range(cols):
            top, left = pad + r * (h + pad), pad + k * (w + pad)
            canvas[top:top + h, left:left + w] = x[r, k]
    arr = (canvas * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def points_extent(points: torch.Tensor) -> float:
    """Half-width of a square that shows 2-D points [N x 2] with a margin: 1.25 max |coordinate|."""
    return 1.25 * points.abs().max().item()


def density_image(points: torch.Tensor, extent: float, size: int = 120) -> torch.Tensor:
    """2-D points [N x 2] as a picture [1 x size x size] in [0, 1]: a log-scaled histogram over
    [-extent, extent]^2, dark where the points are dense (y up)."""
    p = points.detach().double().cpu()
    idx = ((p + extent) / (2 * extent) * size).floor().long()
    inside = ((idx >= 0) & (idx < size)).all(dim=1)
    idx = idx[inside]
    counts = torch.zeros(size * size, dtype=torch.float64)
    counts.index_add_(0, (size - 1 - idx[:, 1]) * size + idx[:, 0], torch.ones(len(idx), dtype=torch.float64))
    shade = torch.log1p(counts) / max(torch.log1p(counts).max().item(), 1e-12)
    return (1.0 - shade).reshape(1, size, size).float()


def save_grid(images: torch.Tensor, path: Path, **kwargs) -> None:
    img = grid_image(images, **kwargs)
    atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """Per-epoch train loss and every validation metric, one panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "epoch" in r]
    if not rows:
        return
    keys = ["train_loss"] + sorted({k for r in rows for k in r if k.startswith("val_")})
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
