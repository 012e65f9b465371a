"""The evaluation pass: a model's logits over a loader; from them the Trainer's scores (``evaluate``, and the test
set scored once at the end, ``test_scores``) and the confusion matrix evaluate.py reports.

All read the same ``predictions``: eval mode, the run's autocast precision, no augmentation but test-time
augmentation's.
"""
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from training import checkpoint
from training.distributed import DistEnv, all_reduce_sum, broadcast_buffers
from training.meters import EpochTotals
from training.precision import Precision
from training.tta import test_time_logits
from utils.progress import progress_bar


@torch.no_grad()
def predictions(model: nn.Module, loader, precision: Precision, tta: str,
                progress: str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits (B, C) in float32, labels (B,)) for each batch of ``loader`` in order; the model runs in eval mode
    and gets its mode back afterwards. ``progress``: the label of a bar over the batches (None: no bar)."""
    was_training = model.training
    model.eval()
    loader.set_epoch(0)
    try:
        for x, y in progress_bar(loader, desc=progress or "", enabled=progress is not None):
            with precision.autocast():
                logits = test_time_logits(model, x, tta)
            yield logits.float(), y
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, loader, precision: Precision, tta: str, dist: DistEnv, device: torch.device,
             progress: str | None = None) -> dict[str, float]:
    """``{"loss", "acc"}``: mean cross-entropy and accuracy of ``model`` over ``loader``, every rank's share summed.
    Give it the unwrapped model: its weights are identical on every rank, and DDP's forward would sync buffers."""
    broadcast_buffers(model, dist)
    totals = EpochTotals(device)
    for logits, y in predictions(model, loader, precision, tta, progress):  # (B, C), (B,)
        totals.add(F.cross_entropy(logits, y), (logits.argmax(1) == y).sum(), len(y))
    loss_sum, correct, count = all_reduce_sum(totals.state(device), dist).tolist()
    return {"loss": loss_sum / count, "acc": correct / count}


def test_scores(model: nn.Module, score: Callable[[], dict], best: Path | None, global_step: int,
                val_size: int | None) -> dict:
    """The test set's scores (``score()`` evaluates ``model`` on it) for the last weights, and for ``best`` (best.pt,
    chosen on the validation split) where it holds other weights. ``test_acc`` is the selected weights' score:
    best.pt's, or the last weights' without a validation split (``best`` None). ``model`` keeps the last weights."""
    scores = score()
    last = {"test_loss_last": scores["loss"], "test_acc_last": scores["acc"]}
    if best is None:
        return {"test_loss": scores["loss"], "test_acc": scores["acc"], **last, "selected_on": "nothing: "
                "data.val_split=0, the test set scores the last weights and nothing was chosen on it"}
    chosen = checkpoint.load(best)  # rank 0 wrote it before the last evaluation's synchronisation
    if chosen["global_step"] != global_step:
        weights = {k: v.clone() for k, v in model.state_dict().items()}  # state_dict() shares the model's storage
        model.load_state_dict(chosen["model"])
        scores = score()
        model.load_state_dict(weights)
    return {"test_loss": scores["loss"], "test_acc": scores["acc"], **last, "best_epoch": chosen["epoch"],
            "selected_on": f"val: best.pt has the best val_acc of {val_size} held-out training images"}


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


def confusion(model: nn.Module, loader, precision: Precision, tta: str, num_classes: int,
              progress: str | None = None) -> Confusion:
    """The confusion matrix and summed loss of ``model`` over every example of ``loader``."""
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    loss_sum = 0.0
    for logits, y in predictions(model, loader, precision, tta, progress):
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        counts += torch.bincount((y * num_classes + logits.argmax(1)).cpu(), minlength=num_classes ** 2)
    return Confusion(counts.view(num_classes, num_classes), loss_sum)
