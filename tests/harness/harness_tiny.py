"""A tiny float CNN for harness tests that need no quantized model (``harness_tiny:tiny_cnn``
as a RunSpec model; the test's folder is put on PYTHONPATH for child processes)."""

import torch.nn as nn


def tiny_cnn(num_classes: int, img_size: int | None = None, flags=None) -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
    model.default_img_size = img_size or 32
    return model
