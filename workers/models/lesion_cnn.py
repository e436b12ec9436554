"""The clinical demo classifier (registry architecture ``whitebox.lesion_cnn``): :class:`BinaryCNN`
with one input channel, for the grey-scale radiograph-like lesion data (workers/training/lesions.py).

conv-BN-ReLU blocks (64 -> 32 -> 16 -> 8 px) and a global max pooling (a lesion anywhere is the
presence of one strong local feature), then a linear head. ``features.14`` (8x8) is the Grad-CAM layer.
The global pooling is a plain ``MaxPool2d(8)`` over the 8x8 maps of its 64x64 input (the same values as
BinaryCNN's ``AdaptiveMaxPool2d(1)``, the same state dict) so that the LRP / Deep Taylor / DeepLIFT rules,
which cover MaxPool2d, apply. Trained by ``python -m workers.training.clinical`` (``lesion-cnn`` and its
Clever-Hans twin ``lesion-cnn-marker``)."""

from __future__ import annotations

import torch.nn as nn

from workers.models.binary_cnn import BinaryCNN

INPUT_SIZE = 64


class LesionCNN(BinaryCNN):
    def __init__(self, num_classes: int = 2, in_channels: int = 1, width: int = 16):
        super().__init__(num_classes=num_classes, in_channels=in_channels, width=width)
        self.pool = nn.MaxPool2d(INPUT_SIZE // 8)  # 8x8 -> 1x1 at the registry's 64x64 input


def lesion_cnn(num_classes: int = 2) -> nn.Module:
    return LesionCNN(num_classes=num_classes)
