"""The binary classifier of the two-generator explainer (survey §6): the fixed network its
generators (:mod:`workers.models.generators`) are trained against; registry architecture
``whitebox.binary_cnn``."""

from __future__ import annotations

import torch
import torch.nn as nn


class BinaryCNN(nn.Module):
    """conv-BN-ReLU blocks (64 -> 32 -> 16 -> 8 px), global max pooling (presence of a part anywhere), linear head.

    ``features.14`` (the last block's ReLU, 8x8) is the Grad-CAM layer (registry target_layer)."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 0-3
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4-7
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),  # 8-10 (16 px)
            nn.MaxPool2d(2),  # 11
            nn.Conv2d(4 * w, 4 * w, 3, padding=1),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),  # 12-14 (8 px)
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def binary_cnn(num_classes: int = 2) -> nn.Module:
    return BinaryCNN(num_classes=num_classes)
