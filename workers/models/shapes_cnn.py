"""The demo model: an AlexNet-like CNN (survey Fig. 2-3) for 64x64 shape images.

conv -> ReLU -> max-pool blocks, then fully connected layers. The last conv
block's maps (``features.10``, after its ReLU) are 8x8 so that CAM-type maps
keep useful resolution. ``features.11`` max-pools them globally (8x8 -> 1x1):
the head sees *which* features fire, not where, so it learns a translation-
invariant classifier from few images (and the relevance stays on the object).
Plain Conv2d / ReLU / MaxPool2d / Dropout / Linear only (no normalisation layers),
so every LRP rule applies. Trained by ``python -m workers.training.demo_model``."""

from __future__ import annotations

import torch
import torch.nn as nn


class ShapesCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16, dropout: float = 0.1):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 0-2: 64 -> 32
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 3-5: 32 -> 16
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 6-8: 16 -> 8
            nn.Conv2d(4 * w, 4 * w, 3, padding=1),
            nn.ReLU(inplace=True),  # 9-10: 8x8
            nn.MaxPool2d(8),  # 11: 8 -> 1
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(4 * w, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)
