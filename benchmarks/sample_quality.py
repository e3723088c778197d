"""Cheap diagnostics of a few samples beside FID (which needs thousands): genzoo's shipped MNIST classifier
(genzoo.features, 99.4 % test accuracy) scores samples by its confidence and the spread of its labels.

    confidence      mean max-softmax probability of the samples (real test digits: about 0.99)
    confident_share share of samples the classifier gives probability > 0.9
    label_entropy   entropy of the histogram of predicted labels, in nats (log 10 = 2.303 = all digits equally)
"""

from __future__ import annotations

import math

import torch

from genzoo import features
from genzoo.nets.classifier import SmallCNN


def classifier() -> tuple[SmallCNN, float]:
    """genzoo's shipped MNIST feature network (genzoo.features) and its test accuracy."""
    return features.feature_net("mnist"), float(features.metadata("mnist")["test_accuracy"])


@torch.no_grad()
def quality(net: SmallCNN, images: torch.Tensor) -> dict:
    """images: [N x 1 x 28 x 28] in [0, 1]."""
    probs = torch.softmax(net(images.float()), dim=1)
    conf, pred = probs.max(1)
    hist = torch.bincount(pred, minlength=10).double() / len(pred)
    entropy = -(hist[hist > 0] * hist[hist > 0].log()).sum().item()
    return {"confidence": conf.mean().item(), "confident_share": (conf > 0.9).double().mean().item(),
            "label_entropy": entropy, "label_entropy_max": math.log(10), "n_samples": len(images)}
