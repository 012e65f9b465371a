"""Checkpoints that survive crashes and refuse what does not belong to the run.

A checkpoint is one dict: model, optimizer, scheduler and scaler state, counters, the best metric,
every RNG state, and the resolved config: tensors and plain Python values only, so it is read with
``torch.load(weights_only=True)`` and a file that would need to run code to load is refused unread.
It carries the SHA-256 of its payload (``payload_digest``), checked on load, so a flipped bit or a
zeroed block is refused rather than trained on. It is written to a temporary file and renamed into
place (``utils.io.atomic_write``), so ``last.pt`` is always either the previous or the new checkpoint,
also after a SIGKILL or a full disk; a failed write raises CheckpointError and leaves the previous one.
"""
import hashlib
import logging
import os
import pickle
import re
from pathlib import Path

import torch

from utils.errors import UserError
from utils.io import save_torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: weights-only loadable (RNG states as lists), payload SHA-256
REQUIRED = ("model", "optimizer", "scheduler", "scaler", "epoch", "step_in_epoch", "global_step", "rng",
            "world_size", "accumulators", "best_val_acc", "final_val_acc", "train_seconds", "train_images",
            "skipped_steps")
STEP_FILE = re.compile(r"step-(\d+)\.pt")
# What a resume may not change: what the weights mean, which optimizer's state the checkpoint holds, and which
# training images are held out for validation.
MUST_MATCH = ("model._target_", "model.activation", "model.skip", "optimizer._target_", "optimizer.base._target_",
              "data.val_split")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used or written; the message says what is wrong and what to do."""


def save(state: dict, directory: Path, *, keep_last_k: int = 1, best: bool = False) -> Path:
    """Write ``last.pt`` atomically; keep the ``keep_last_k`` newest ``step-N.pt`` as hard links."""
    last = directory / "last.pt"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".*.tmp"):  # left by a process killed mid-write; this run is the only writer
            stale.unlink(missing_ok=True)
        payload = {**state, "format_version": FORMAT_VERSION}
        save_torch({**payload, "sha256": payload_digest(payload)}, last)
        if keep_last_k > 1:
            _link_replace(last, directory / f"step-{state['global_step']:09d}.pt")
            for old in step_files(directory)[:-keep_last_k]:
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


def payload_digest(state: dict) -> str:
    """SHA-256 over the payload's structure and bytes: keys in order, each value's type, each tensor's
    dtype, shape and raw bytes. The same for a state and its ``torch.save``/``torch.load`` round trip."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def step_files(directory: Path) -> list[Path]:
    """The ``step-N.pt`` files, oldest first by the step each file holds (names are only zero-padded to 9
    digits, so name order breaks past step 999,999,999; a file that does not load sorts first)."""
    return sorted((p for p in directory.glob("step-*.pt") if STEP_FILE.fullmatch(p.name)), key=_saved_step)


def _saved_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # torn or foreign: never newer than a readable one
        return -1


RESUME_INSTEAD = "resume from another checkpoint (checkpoints/last.pt, best.pt, step-N.pt) or start a new run"


def load(path: str | os.PathLike, instead: str = RESUME_INSTEAD) -> dict:
    """The checkpoint at ``path``, or a one-line CheckpointError: missing, torn, foreign, another format,
    a payload that needs code to load, fails its checksum, or holds non-finite weights. Each says what is wrong
    with the file, then ``instead``: what the caller's user can do (resume, evaluate.py and init_from differ)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; {instead}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torn, truncated, not a torch file at all, or one that needs code to load
        needs = re.search(r"GLOBAL ([\w.]+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if needs:
            raise CheckpointError(f"{path} needs code to load ({needs.group(1)}), refused unread: a checkpoint "
                                  f"holds only tensors and plain values; load only files you trust") from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({_unreadable(path, e)}); {instead}") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is not a checkpoint written by this project; {instead}")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['format_version']}, this version reads "
                              f"{FORMAT_VERSION} (the version that wrote it reads it); {instead}")
    if state.pop("sha256", None) != payload_digest(state):
        raise CheckpointError(f"{path} fails its checksum (its payload changed after it was written: a disk or "
                              f"copy error); {instead}")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is incomplete: {instead}")
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CheckpointError(f"{path} holds no model weights under 'model'; {instead}")
    bad = next((k for k, v in state["model"].items() if v.is_floating_point() and not v.isfinite().all()), None)
    if bad is not None:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf in {bad!r}); {instead}")
    return state


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch.load failed, in a few words: the file is no zip archive at all (torch's own message would talk of
    ``weights_only``), or the first sentence of the error (a torn archive: no central directory)."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return "not the zip archive torch.save writes"
    reason = str(error).strip().splitlines()[0].split(". ")[0][:120] if str(error).strip() else "no details"
    return f"{type(error).__name__}: {reason}"


def hyperparameters(optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """The configured optimizer hyperparameters that loading a checkpoint replaces: each param group's settings,
    and its LR as the schedule's base LR (the group's ``lr`` is the schedule's output at the current step)."""
    groups = [{k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
              for group in optimizer.param_groups]
    return {"base_lrs": list(scheduler.base_lrs), "groups": groups}


def reapply_hyperparameters(configured: dict, optimizer: torch.optim.Optimizer, scheduler) -> list[str]:
    """After loading a checkpoint, put ``configured`` (``hyperparameters`` taken before the load) back, so a
    resume with ``optimizer.lr=...`` trains at that LR; one line per value that changed. The schedule's shape
    (kind, warmup, milestones, length) is not a hyperparameter here: the schedule refuses a different one."""
    changes = [f"optimizer lr {saved:g} -> {wanted:g}" for saved, wanted in
               dict.fromkeys(zip(scheduler.base_lrs, configured["base_lrs"])) if saved != wanted]
    scheduler.base_lrs = list(configured["base_lrs"])
    for group, settings, lr in zip(optimizer.param_groups, configured["groups"], scheduler.base_lrs, strict=True):
        group["initial_lr"] = lr
        for key, wanted in settings.items():
            saved = group.get(key)
            if _plain(saved) != _plain(wanted) and f"optimizer {key} {saved!r} -> {wanted!r}" not in changes:
                changes.append(f"optimizer {key} {saved!r} -> {wanted!r}")
            group[key] = wanted
    return changes


def _plain(value):
    """A group's tuple settings (Adam's betas) come back from a checkpoint as lists."""
    return list(value) if isinstance(value, tuple) else value


def check_model_matches(state: dict, model: torch.nn.Module, path,
                        instead: str = "resume with the config that wrote it") -> None:
    """Same parameter names and shapes, or a one-line error naming the first difference, then ``instead``."""
    saved = {k: tuple(v.shape) for k, v in state["model"].items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if saved != ours:
        diff = sorted(set(saved) ^ set(ours)) or [k for k in ours if saved[k] != ours[k]]
        raise CheckpointError(f"{path} holds a different model (first difference: {diff[0]!r}, "
                              f"{saved.get(diff[0])} vs {ours.get(diff[0])}); {instead}")


def saved_config(state: dict) -> dict | None:
    """The resolved config the checkpoint was trained with (None in a checkpoint saved without one)."""
    return (state.get("config") or {}).get("resolved") or None


def check_config_matches(state: dict, resolved: dict | None, path) -> None:
    """The saved config agrees with ours on ``MUST_MATCH`` (a checkpoint saved without a config passes)."""
    saved = saved_config(state)
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


def find_latest(directory: Path) -> Path | None:
    """The newest checkpoint in ``directory`` that loads whole (``last.pt`` or a ``step-N.pt``, newest by the
    step it holds); the ones passed over are logged. None when there is no checkpoint at all."""
    candidates = [p for p in [directory / "last.pt", *step_files(directory)] if p.is_file()]
    for path in sorted(candidates, key=_saved_step, reverse=True):
        try:
            load(path, instead="trying the next older one")
            return path
        except CheckpointError as e:
            log.warning("passing over %s", e)
    if candidates:
        raise CheckpointError(f"no checkpoint in {directory} loads (see the warnings above); resume from a copy "
                              f"elsewhere with trainer.resume=<path>, or start anew in another hydra.run.dir")
    return None
