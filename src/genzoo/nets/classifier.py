from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """A small image classifier, [N x C x H x W] in [0, 1] -> logits [N x classes]; ``features`` gives the
    penultimate layer (128 ReLU units), the feature space of genzoo's FID and KID.

    Dropout sits between the features and the head only, so the features are the same in train and eval mode;
    there is no batch norm, so a feature never depends on the other images of its batch.
    """

    feature_dim = 128

    def __init__(self, in_channels: int = 1, classes: int = 10, width: int = 32, dropout: float = 0.0):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * w * 16, self.feature_dim), nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.body(x)))
