"""The clinical demo classifier (registry architecture ``whitebox.lesion_cnn``): :class:`BinaryCNN`
with one input channel, for the grey-scale radiograph-like lesion data (workers/training/lesions.py).

conv-BN-ReLU blocks (64 -> 32 -> 16 -> 8 px) and global max pooling: "a lesion anywhere" is the
presence of one strong local feature. ``features.14`` (8x8) is the Grad-CAM layer. Trained by
``python -m workers.training.clinical`` (``lesion-cnn`` and its Clever-Hans twin ``lesion-cnn-marker``)."""

from __future__ import annotations

import torch.nn as nn

from workers.models.binary_cnn import BinaryCNN


def lesion_cnn(num_classes: int = 2) -> nn.Module:
    return BinaryCNN(num_classes=num_classes, in_channels=1)
