"""``python evaluate.py checkpoint=<path>``: a checkpoint scored on the test set (or ``split=val``).

The model, data and trainer settings are those saved in the checkpoint; a key of the ``data``, ``model`` or
``trainer`` section on the command line (or a group option, ``data=cifar10``) replaces the checkpoint's, so
``trainer.tta=flip`` scores with test-time augmentation and ``data.root=<folder>`` finds moved data. Writes
``evaluation.json`` (loss, accuracy, per-class accuracy, the confusion matrix) and ``confusion_matrix.png`` into
its run directory and prints the scores with a per-class table.
"""
import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchvision.datasets.folder import find_classes

from cli.overrides import INSTEAD, apply_overrides, load_with_config
from cli.validate import validate
from training import checkpoint
from training.build import build_data, build_model, build_runtime
from training.evaluation import Confusion, confusion
from utils.errors import ConfigError, require
from utils.io import save_json
from utils.progress import show_progress

log = logging.getLogger(__name__)

OWN_KEYS = ("checkpoint", "split")
SECTIONS = ("data", "model", "trainer")  # what a score depends on; the rest of a checkpoint's config does not


def evaluate(cfg: DictConfig, overrides: list[str], run_dir: str | Path) -> dict:
    """Score ``cfg.checkpoint`` on ``cfg.split`` with its saved config and the command line's ``overrides``."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError(f"checkpoint is missing: {INSTEAD}")
    path, run_dir = Path(cfg.checkpoint), Path(run_dir)
    require(cfg.split in ("test", "val"), "split", cfg.split, "test or val")
    state, saved = load_with_config(path)
    run = checkpoint_config(saved, cfg, overrides)
    validate(run, run_dir)
    if cfg.split == "val" and not run.data.val_split:
        raise ConfigError(f"split='val' is invalid for {path}: its run held no validation images "
                          f"(data.val_split=0): allowed test")
    t = run.trainer
    runtime = build_runtime(t.device, t.precision, None, run_dir, tf32=t.tf32)
    model = instantiate(run.model)
    memory_format = build_model(model, runtime, t.channels_last, t.norm_fp32)
    progress = show_progress(cfg.trainer.progress_bar, runtime.dist.is_main)  # this command's setting, not the run's
    data = build_data(instantiate(run.data, _partial_=True), runtime, memory_format, model, progress)
    checkpoint.check_model_matches(state, model, path, "leave out the model.* overrides: the checkpoint's config "
                                   "builds its model")
    model.load_state_dict(state["model"])  # after build_data: a data-dependent init must not overwrite the weights
    loader = data.test if cfg.split == "test" else data.val
    scores = confusion(model, loader, runtime.precision, t.tta, data.num_classes,
                       f"evaluating ({cfg.split})" if progress else None)
    names = class_names(run.data, data.num_classes)
    record = {"checkpoint": str(path), "epoch": state["epoch"], "global_step": state["global_step"],
              "split": cfg.split, "images": scores.n, "tta": t.tta, "device": str(runtime.device),
              "precision": runtime.precision.mode, "loss": scores.loss, "acc": scores.acc,
              "class_acc": dict(zip(names, scores.class_acc())), "classes": names,
              "confusion": scores.counts.tolist()}
    save_json(record, run_dir / "evaluation.json")
    title = f"{_model_name(state, run)} on the {cfg.split} set of {run.data.source}: acc {scores.acc:.2%}"
    figure = confusion_figure(scores, names, title, run_dir)
    log.info("\n%s", report(record, scores, names, [run_dir / "evaluation.json", figure]))
    return record


def checkpoint_config(saved: dict, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The checkpoint's resolved config, with each data/model/trainer key (or group) that the command line set
    taken from ``cfg``, the config Hydra composed from it; any other key is refused by name. Trainer keys newer
    than the checkpoint take their defaults from ``cfg``."""
    run = OmegaConf.create(saved)
    newer = keys_missing(saved.get("trainer", {}), OmegaConf.to_container(cfg.trainer, resolve=True), "trainer.")
    for key, value in newer.items():
        OmegaConf.update(run, key, value, merge=False)
    if newer:
        log.info("the checkpoint's config predates %s: their defaults apply", ", ".join(newer))
    for override in apply_overrides(run, cfg, overrides, SECTIONS):
        if override.key_or_group not in OWN_KEYS:
            raise ConfigError(f"{override.key_or_group}={override.value()!r} is invalid for evaluate.py: allowed "
                              f"checkpoint=, split= and keys of data, model and trainer (the rest of the "
                              f"checkpoint's config does not change its scores)")
    return run


def keys_missing(saved: dict, current: dict, prefix: str) -> dict:
    """The keys of ``current`` that ``saved`` lacks, dotted (under ``prefix``), with their values."""
    missing = {}
    for key, value in current.items():
        if key not in saved:
            missing[prefix + key] = value
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            missing.update(keys_missing(saved[key], value, f"{prefix}{key}."))
    return missing


def class_names(data_cfg: DictConfig, num_classes: int) -> list[str]:
    """An image folder's class folder names (sorted: the label order), else the label numbers."""
    if data_cfg.source == "image_folder":
        return find_classes(str(Path(data_cfg.root) / "test"))[0]
    return [str(c) for c in range(num_classes)]


def confusion_figure(scores: Confusion, names: list[str], title: str, out_dir: Path) -> Path:
    """``confusion_matrix.png``: the counts, coloured by each row's share (recall per true class)."""
    from analysis.figures import FigureWriter, plt
    counts = scores.counts.double()
    shares = counts / counts.sum(1, keepdim=True).clamp_min(1)
    size = 1.2 + 0.55 * len(names)
    figure, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted class", ylabel="true class")
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    ax.set_title(title, fontsize=10)
    figure.colorbar(image, ax=ax, label="share of the true class")
    return FigureWriter(out_dir).save(figure, "confusion_matrix")


def report(record: dict, scores: Confusion, names: list[str], written: list[Path]) -> str:
    """The scores, then one row per class: its images, accuracy, and the class it is most often taken for."""
    rows = [("checkpoint", f"{record['checkpoint']} (epoch {record['epoch']}, step {record['global_step']})"),
            (f"{record['split']} set", f"{record['images']} images, tta {record['tta']}, {record['device']} "
                                       f"{record['precision']}"),
            ("loss", f"{record['loss']:.4f}"), ("accuracy", f"{record['acc']:.2%}")]
    lines = [f"{name:<12} {value}" for name, value in rows]
    width = max(len("class"), *map(len, names))
    lines.append(f"{'class':<{width}}  images  accuracy  most often taken for")
    for c, (name, acc) in enumerate(zip(names, scores.class_acc())):
        row = scores.counts[c].clone()
        row[c] = -1
        wrong = int(row.argmax())
        confused = f"{names[wrong]} ({int(row[wrong])})" if row[wrong] > 0 else "-"
        shown = "-" if acc is None else f"{acc:.2%}"
        lines.append(f"{name:<{width}}  {int(scores.counts[c].sum()):>6}  {shown:>8}  {confused}")
    lines.append(f"{'wrote':<12} {', '.join(map(str, written))}")
    return "\n".join(lines)


def _model_name(state: dict, run: DictConfig) -> str:
    """The model's config option (``resnet20``) when the run recorded it, else its class."""
    return (state["config"].get("hparams") or {}).get("choice.model") or run.model._target_.rsplit(".", 1)[-1]
