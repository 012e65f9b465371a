"""The evaluation pass: a model's logits over a loader, and the confusion matrix evaluate.py reports.

The Trainer's validation and test scores and ``evaluate.py`` read the same ``predictions``: eval mode, the run's
autocast precision, no augmentation but test-time augmentation's.
"""
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.precision import Precision
from training.tta import test_time_logits


@torch.no_grad()
def predictions(model: nn.Module, loader, precision: Precision,
                tta: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits (B, C) in float32, labels (B,)) for each batch of ``loader`` in order; the model runs in eval mode
    and gets its mode back afterwards."""
    was_training = model.training
    model.eval()
    loader.set_epoch(0)
    try:
        for x, y in loader:
            with precision.autocast():
                logits = test_time_logits(model, x, tta)
            yield logits.float(), y
    finally:
        model.train(was_training)


@dataclass
class Confusion:
    """``counts[i, j]``: examples of class i predicted as j; ``loss_sum``: their summed cross-entropy."""
    counts: torch.Tensor  # (C, C) int64, rows the true class
    loss_sum: float

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n

    @property
    def acc(self) -> float:
        return int(self.counts.trace()) / self.n

    def class_acc(self) -> list[float | None]:
        """Recall of each class, correct_c / n_c (None for a class with no examples)."""
        return [int(row[c]) / int(row.sum()) if row.sum() else None for c, row in enumerate(self.counts)]


def confusion(model: nn.Module, loader, precision: Precision, tta: str, num_classes: int) -> Confusion:
    """The confusion matrix and summed loss of ``model`` over every example of ``loader``."""
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    loss_sum = 0.0
    for logits, y in predictions(model, loader, precision, tta):
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        counts += torch.bincount((y * num_classes + logits.argmax(1)).cpu(), minlength=num_classes ** 2)
    return Confusion(counts.view(num_classes, num_classes), loss_sum)
