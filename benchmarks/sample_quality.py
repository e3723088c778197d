"""A stand-in for FID until the evaluation issue ships its feature network: a small MNIST classifier, trained
once here (cached in benchmarks/results/), scores samples by its confidence and the spread of its labels.

    confidence      mean max-softmax probability of the samples (real test digits: about 0.99)
    confident_share share of samples the classifier gives probability > 0.9
    label_entropy   entropy of the histogram of predicted labels, in nats (log 10 = 2.303 = all digits equally)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from genzoo import runs
from genzoo.data import load_dataset
from genzoo.nets.classifier import SmallCNN

WEIGHTS = Path(__file__).parent / "results" / "mnist_classifier.safetensors"


def classifier(epochs: int = 2, seed: int = 0) -> tuple[SmallCNN, float]:
    """The cached classifier and its test accuracy (trained on first use, about 2 minutes on two cores)."""
    data = load_dataset("mnist")
    net = SmallCNN()
    if WEIGHTS.is_file():
        tensors, meta = runs.load_tensors(WEIGHTS)
        runs.load_weights(net, tensors, WEIGHTS)
        return net.eval(), float(meta["test_accuracy"])
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = data.train.images.float() / 255, data.train.labels
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=g).split(128):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(b).argmax(1) for b in (data.test.images.float() / 255).split(1000)])
    accuracy = (pred == data.test.labels).float().mean().item()
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    runs.save_tensors(WEIGHTS, net.state_dict(), metadata={"test_accuracy": str(accuracy)})
    return net, accuracy


@torch.no_grad()
def quality(net: SmallCNN, images: torch.Tensor) -> dict:
    """images: [N x 1 x 28 x 28] in [0, 1]."""
    probs = torch.softmax(net(images.float()), dim=1)
    conf, pred = probs.max(1)
    hist = torch.bincount(pred, minlength=10).double() / len(pred)
    entropy = -(hist[hist > 0] * hist[hist > 0].log()).sum().item()
    return {"confidence": conf.mean().item(), "confident_share": (conf > 0.9).double().mean().item(),
            "label_entropy": entropy, "label_entropy_max": math.log(10), "n_samples": len(images)}
