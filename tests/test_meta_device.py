"""Device agreement without a GPU: the parts run on torch's ``meta`` device, whose stack, cat and foreach ops refuse
a tensor of another device as CUDA does. A CPU tensor slipped into a GPU step (a constant made without
``device=``) fails here as it would on a GPU; FakeTensorMode would let it pass."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

import optimizers
from conftest import CONFIG_DIR, compose_cfg
from data.loader import BatchLoader
from training.clipping import MODES, clip_gradients
from training.meters import EpochTotals, PendingSteps
from training.precision import Precision
from training.step import GradientClip, train_step

META = torch.device("meta")
OPTIMIZERS = sorted(p.stem for p in Path(CONFIG_DIR, "optimizer").glob("*.yaml")
                    if not getattr(get_class(OmegaConf.load(p)._target_), "requires_closure", False))
MODELS = sorted(p.stem for p in Path(CONFIG_DIR, "model").glob("*.yaml") if p.stem != "resnet")  # resnet: a base


def meta_params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.empty(s, device=META)) for s in [(4, 3), (4,), (5, 2, 3, 3), ()]]


@pytest.mark.parametrize("mode", [m for m in MODES if m != "autoclip"])  # autoclip: torch.nanquantile reads a size
@pytest.mark.parametrize("grads", ["all", "none"])                   # on the host (.item()), so not on meta
def test_clipping_answers_on_the_parameters_device(mode, grads):
    params = meta_params()
    for p in params if grads == "all" else []:
        p.grad = torch.empty_like(p)
    result = clip_gradients(params, mode, 1.0)
    assert result.total_norm.device == META and result.clipped.device == META
    torch.stack([result.total_norm.float(), result.clipped.float(), torch.zeros((), device=META)])  # as the loop


def optimizer_cfg(name: str, foreach: bool) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR, "optimizer", f"{name}.yaml")))
    for group in (cfg, cfg.get("base", {})):
        if "foreach" in group:
            group["foreach"] = foreach
    return cfg


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per-tensor"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_step_on_the_parameters_device(name, foreach):
    """Both code paths, two steps (state made, then used); every state tensor on the device but ``step`` (a host
    counter, as in torch.optim). Closure optimizers (L-BFGS, Hessian-free) are left out: their line searches read
    the loss on the host by design."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).to(META)
    optimizer = optimizers.build(optimizer_cfg(name, foreach), model)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.empty_like(p)
        optimizer.step()
    states = [v for s in optimizer.state.values() for k, v in s.items() if torch.is_tensor(v) and k != "step"]
    assert all(v.device == META for v in states) and all(p.device == META for p in model.parameters())
    assert states or name == "sgd"  # plain SGD keeps no state


def model_cfg(name: str):
    data = "mnist" if "mlp" in name else "cifar10"
    return compose_cfg(f"model={name}", f"data={data}").model, (1, 28, 28) if data == "mnist" else (3, 32, 32)


@pytest.mark.parametrize("name", MODELS)
def test_models_train_on_the_meta_device(name):
    cfg, shape = model_cfg(name)
    model = instantiate(cfg).to(META)
    logits = model(torch.empty(8, *shape, device=META))
    F.cross_entropy(logits, torch.zeros(8, dtype=torch.long, device=META)).backward()
    assert logits.shape == (8, 10) and logits.device == META
    assert all(p.grad is not None and p.grad.device == META for p in model.parameters() if p.requires_grad)


def test_loader_builds_batches_on_the_data_device():
    images = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    loader = BatchLoader(images, torch.arange(100), batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True,
                         drop_last=True, crop_padding=2, flip=True, device=META, memory_format=torch.channels_last)
    batches = list(loader)
    assert len(batches) == 6
    for x, y in batches:
        assert x.device == y.device == META and x.shape == (16, 3, 8, 8) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
    x, y = loader.sample(10)
    assert x.device == META and x.shape == (10, 3, 8, 8)


def tiny_step_parts():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(META)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), Precision("fp32", META)


@pytest.mark.parametrize("clip", ["none", "norm", "agc"])
def test_a_step_and_its_bookkeeping_stay_on_the_device(clip):
    model, optimizer, precision = tiny_step_parts()
    x, y = torch.empty(6, 4, device=META), torch.zeros(6, dtype=torch.long, device=META)
    pending, totals = PendingSteps(), EpochTotals(META)
    for step in range(2):
        result = train_step(model, F.cross_entropy, optimizer, precision, x, y, clip=GradientClip(clip, 1.0))
        correct = (result.logits.argmax(1) == result.labels).sum()
        pending.add(step, 0.1, result, correct)
        totals.add(result.loss, correct, len(y))
    assert torch.stack(pending.values).device == META and totals.state(META).device == META


def test_a_skipped_step_stays_on_the_loss_device(monkeypatch):
    """on_nan=skip: the skipped step's numbers join the other steps' in one stack at the flush (a CPU nan in a GPU
    run crashed it). The meta loss has no value: isfinite is told it is not finite."""
    model, optimizer, precision = tiny_step_parts()
    x, y = torch.empty(6, 4, device=META), torch.zeros(6, dtype=torch.long, device=META)
    monkeypatch.setattr(torch, "isfinite", lambda t: torch.tensor(False))
    result = train_step(model, F.cross_entropy, optimizer, precision, x, y, skip_nonfinite=True)
    assert all(p.grad is None for p in model.parameters())  # skipped: no backward, no step
    pending = PendingSteps()
    pending.add(0, 0.1, result, (result.logits.argmax(1) == result.labels).sum())
    assert torch.stack(pending.values).device == META
