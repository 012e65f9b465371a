"""Checkpoints that survive crashes and refuse what does not belong to the run.

A checkpoint is one dict: model, optimizer, scheduler and scaler state, counters, the best metric,
every RNG state, and the resolved config. It is written to a temporary file and renamed into place
(``utils.io.atomic_write``), so ``last.pt`` is always either the previous or the new checkpoint, also
after a SIGKILL or a full disk; a failed write raises CheckpointError and leaves the previous one.
"""
import os
from pathlib import Path

import torch

from utils.io import save_torch

FORMAT_VERSION = 1
REQUIRED = ("model", "optimizer", "scheduler", "scaler", "epoch", "step_in_epoch", "global_step", "rng",
            "world_size")
# What a resume may not change: what the weights mean, which optimizer's state the checkpoint holds, and which
# training images are held out for validation.
MUST_MATCH = ("model._target_", "model.activation", "model.skip", "optimizer._target_", "optimizer.base._target_",
              "data.val_split")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used or written; the message says what is wrong and what to do."""


def save(state: dict, directory: Path, *, keep_last_k: int = 1, best: bool = False) -> Path:
    """Write ``last.pt`` atomically; keep the ``keep_last_k`` newest ``step-N.pt`` as hard links."""
    last = directory / "last.pt"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".*.tmp"):  # left by a process killed mid-write; this run is the only writer
            stale.unlink(missing_ok=True)
        save_torch({**state, "format_version": FORMAT_VERSION}, last)
        if keep_last_k > 1:
            _link_replace(last, directory / f"step-{state['global_step']:09d}.pt")
            for old in sorted(directory.glob("step-*.pt"))[:-keep_last_k]:
                old.unlink(missing_ok=True)
        if best:
            _link_replace(last, directory / "best.pt")
    except OSError as e:
        kept = "last.pt holds the last complete checkpoint" if last.is_file() else "no checkpoint was written yet"
        raise CheckpointError(f"could not write a checkpoint to {directory} ({e.strerror or e}); {kept}. Free space "
                              f"or fix the folder, then continue with trainer.resume=auto") from None
    return last


def _link_replace(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` without a moment where ``dst`` is torn."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.link(src, tmp)
    os.replace(tmp, dst)


def load(path: str | os.PathLike) -> dict:
    """The checkpoint at ``path``, or a one-line CheckpointError: missing, torn, foreign or another format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; give trainer.resume=<path to a .pt file> or auto")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torn, truncated or not a torch file at all
        reason = str(e).splitlines()[0][:120] if str(e).strip() else "no details"
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {reason}); "
                              f"delete it or resume from another file") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is not a checkpoint written by this project; resume from a last.pt or best.pt")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['format_version']}, this version reads "
                              f"{FORMAT_VERSION}; resume it with the version that wrote it, or start a new run")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is incomplete: resume from another file "
                              f"or start a new run")
    return state


def check_model_matches(state: dict, model: torch.nn.Module, path) -> None:
    """Same parameter names and shapes, or a one-line error naming the first difference."""
    saved = {k: tuple(v.shape) for k, v in state["model"].items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if saved != ours:
        diff = sorted(set(saved) ^ set(ours)) or [k for k in ours if saved[k] != ours[k]]
        raise CheckpointError(f"{path} holds a different model (first difference: {diff[0]!r}, "
                              f"{saved.get(diff[0])} vs {ours.get(diff[0])}); resume with the config that wrote it")


def check_config_matches(state: dict, resolved: dict | None, path) -> None:
    """The saved config agrees with ours on ``MUST_MATCH`` (a checkpoint saved without a config passes)."""
    saved = (state.get("config") or {}).get("resolved")
    if not saved or not resolved:
        return
    for key in MUST_MATCH:
        if _select(saved, key) != _select(resolved, key):
            raise CheckpointError(f"{path} was written with {key}={_select(saved, key)!r}, this run has "
                                  f"{_select(resolved, key)!r}; resume with the config that wrote it, or start anew")


def _select(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def find_last(directory: Path) -> Path | None:
    last = directory / "last.pt"
    return last if last.is_file() else None
