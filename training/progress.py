"""The epoch's progress bar: steps done, and at each logging step the last step's loss, accuracy, LR and the
epoch's images per second so far. Off (``enabled=False``) it is a no-op."""
from utils.progress import progress_bar


class EpochBar:
    def __init__(self, steps: int, done: int, epoch: int, epochs: int, enabled: bool):
        self.bar = progress_bar(total=steps, initial=done, desc=f"epoch {epoch}/{epochs}", enabled=enabled)

    def update(self) -> None:
        self.bar.update(1)

    def show(self, loss: float, acc: float, lr: float, images_per_sec: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", lr=f"{lr:.3g}", img_s=f"{images_per_sec:.0f}",
                             refresh=False)

    def close(self) -> None:
        self.bar.close()
