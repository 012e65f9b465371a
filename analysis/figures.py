"""Where the lab's figures go: PNG files in the tool's run directory and, optionally, TensorBoard images.

Importing this module selects matplotlib's Agg backend (no display needed); the tools import ``plt`` from here.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

__all__ = ["FigureWriter", "model_name", "plt"]


def model_name(model_cfg) -> str:
    """A model config's class, with its depth where it has one: ``ResNet-20``, ``MLP``."""
    name = model_cfg["_target_"].rsplit(".", 1)[-1]
    return f"{name}-{model_cfg['depth']}" if "depth" in model_cfg else name


class FigureWriter:
    """Saves each figure as ``<out_dir>/<name>.png`` (and as a TensorBoard image under ``<out_dir>/tb``)."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = False):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.out_dir / "tb")) if tensorboard else None
        self.paths: list[Path] = []

    def save(self, figure, name: str) -> Path:
        path = self.out_dir / f"{name}.png"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        if self.writer is not None:
            self.writer.add_figure(name, figure, close=False)
        plt.close(figure)
        self.paths.append(path)
        return path

    def add(self, path: Path) -> None:
        """Record a file written by other means (a GIF, a JSON) so ``report`` lists it."""
        self.paths.append(Path(path))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def report(self) -> str:
        self.close()
        lines = [f"wrote {len(self.paths)} files to {self.out_dir}:"] + [f"  {p}" for p in self.paths]
        if self.writer is not None:
            lines.append(f"  TensorBoard images: tensorboard --logdir {self.out_dir / 'tb'}")
        return "\n".join(lines)
