"""experiment=cifar10_fast and cifar10_94: the airbench net, its whitening init, test-time augmentation, the recipes."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CIFAR_FOLDER, CONFIG_DIR, compose_cfg
from cli.compose import build_trainer, flatten, train
from models.airbench import AirbenchNet, ShiftBatchNorm


def smooth_images(n: int = 256, size: int = 16) -> torch.Tensor:
    """uint8 images whose neighbouring pixels and channels are strongly correlated."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size // 4, size // 4, generator=g)
    x = F.interpolate(x, size=size, mode="bilinear") + 0.1 * torch.rand(n, 3, size, size, generator=g)
    return (x / x.max() * 255).to(torch.uint8)


def patch_covariance(model: AirbenchNet, x: torch.Tensor) -> torch.Tensor:
    """Covariance of the whitening layer's first half of outputs (bias excluded) over all positions."""
    out = F.conv2d(x, model.whiten.weight)[:, : model.whiten.out_channels // 2]
    return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).T.cov()


def test_whitening_init_decorrelates_2x2_patches():
    images = smooth_images()
    mean, std = (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)
    model = AirbenchNet(whiten_eps=1e-8)
    x = (images.float() / 255 - 0.5) / 0.2
    assert (patch_covariance(model, x) - torch.eye(12)).abs().max() > 0.5  # before: far from white
    model.init_from_data(images, mean, std, samples=len(images))
    assert torch.allclose(patch_covariance(model, x), torch.eye(12), atol=1e-2)
    assert torch.equal(model.whiten.weight[:12], -model.whiten.weight[12:])


def test_shift_scale_speeds_up_sgd_by_its_square():
    x = torch.randn(8, 4, 3, 3)
    moved = []
    for scale in (1.0, 8.0):
        norm = ShiftBatchNorm(4, momentum=0.4, bias_scale=scale)
        norm(x).sum().backward()
        torch.optim.SGD(norm.parameters(), lr=0.01).step()
        moved.append(norm.shift.detach() * scale)  # the effective shift after one step
    assert torch.allclose(moved[1], 64 * moved[0])
    assert not any(p.requires_grad for n, p in ShiftBatchNorm(4, 0.4, 8.0).named_parameters() if n != "shift")


def test_airbench_net_size_and_output():
    model = AirbenchNet()
    assert sum(p.numel() for p in model.parameters()) == 1_971_640
    assert not model.whiten.weight.requires_grad  # the whitening filters stay as initialised
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_recipe_schedule_matches_airbench(cfg):
    c = cfg("experiment=cifar10_fast")
    model = instantiate(c.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=c.optimizer.lr)
    schedule = instantiate(c.scheduler)(optimizer, steps_per_epoch=100, total_steps=1000)
    lrs = [schedule.lr_at(t)[0] / c.optimizer.lr for t in (0, 229, 999)]
    assert lrs == pytest.approx([0.2, 1.0, 0.07], abs=1e-3)  # warm up 23% from 0.2x, decay linearly to 0.07x


def shift_down_right(x: torch.Tensor) -> torch.Tensor:
    """x moved one pixel down and right, the first row and column repeating the reflected second ones."""
    x = torch.cat([x[:, :, 1:2], x[:, :, :-1]], dim=2)
    return torch.cat([x[:, :, :, 1:2], x[:, :, :, :-1]], dim=3)


def shift_up_left(x: torch.Tensor) -> torch.Tensor:
    x = torch.cat([x[:, :, 1:], x[:, :, -2:-1]], dim=2)
    return torch.cat([x[:, :, :, 1:], x[:, :, :, -2:-1]], dim=3)


@pytest.mark.needs_data
@pytest.mark.parametrize("tta", ["none", "flip", "flip_translate"])
def test_test_time_augmentation_averages_the_logits_of_shifted_and_mirrored_images(cfg, tmp_path, tta):
    trainer = build_trainer(cfg("model=cnn", f"trainer.tta={tta}", "trainer.precision=fp32"), tmp_path)
    scores = trainer.evaluate()
    loss, acc = scores["loss"], scores["acc"]
    model, (x, y) = trainer.model.eval(), next(iter(trainer.data.val))
    assert len(y) == trainer.data.val.num_examples
    with torch.no_grad():
        mirrored = [(model(v) + model(v.flip(3))) / 2 for v in (x, shift_down_right(x), shift_up_left(x))]
        plain = model(x)
    assert not torch.allclose(plain, mirrored[0]) and not torch.allclose(mirrored[1], mirrored[2])
    logits = {"none": plain, "flip": mirrored[0], "flip_translate": mirrored[0] / 2 + (mirrored[1] + mirrored[2]) / 4}
    assert loss == pytest.approx(F.cross_entropy(logits[tta], y).item(), rel=1e-5)
    assert acc == pytest.approx((logits[tta].argmax(1) == y).float().mean().item())


@pytest.mark.needs_data
def test_build_trainer_whitens_the_first_layer_from_the_training_images(cfg, tmp_path):
    trainer = build_trainer(cfg("model=airbench", "trainer.precision=fp32"), tmp_path)
    model, data = trainer.model, trainer.data
    x = (data.train.images.float() / 255 - data.mean[0]) / data.std[0]  # MNIST: one channel
    assert torch.allclose(patch_covariance(model, x), torch.eye(4), atol=0.05)


@pytest.mark.slow
@pytest.mark.needs_data
@pytest.mark.skipif(not CIFAR_FOLDER.is_dir(), reason=f"no CIFAR-10 image folder at {CIFAR_FOLDER}")
def test_fast_recipe_learns_a_cifar10_subset(cfg, tmp_path):
    summary = train(cfg("experiment=cifar10_fast", f"data.root={CIFAR_FOLDER}", "data.train_subset=10240",
                        "data.test_subset=2000", "data.batch_size=512", "trainer.epochs=4", "logger=none"), tmp_path)
    assert summary["test_acc"] >= 0.65  # measured 0.7305 (4 epochs of 10,240 images, ~2 min on 2 threads)


def test_dirac_and_data_whitening_can_be_switched_off():
    images, mean, std = smooth_images(), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)
    torch.manual_seed(0)
    default, plain = AirbenchNet(), AirbenchNet(dirac=False, whiten_from_data=False)
    conv = default.blocks[1].conv1.weight  # 64 -> 256: the first 64 filters are the identity
    assert torch.equal(conv[:64, :, 1, 1], torch.eye(64)) and conv[:64].abs().sum() == 64
    assert not torch.equal(plain.blocks[1].conv1.weight[:64, :, 1, 1], torch.eye(64))
    before = plain.whiten.weight.clone()
    plain.init_from_data(images, mean, std, samples=len(images))
    assert torch.equal(plain.whiten.weight, before) and plain.whiten.weight.requires_grad
    assert plain.frozen_parameters == () and default.frozen_parameters == ("whiten.weight",)


def test_fast_recipe_is_airbench94_cut_to_9_epochs():
    fast, c = (compose_cfg(f"experiment={name}", tiny=False) for name in ("cifar10_fast", "cifar10_94"))
    assert (fast.data.val_split, fast.trainer.val_every_n_epochs) == (0, fast.trainer.epochs)  # all 50k train
    assert (fast.data.flip, fast.data.pad_mode, fast.trainer.epochs, fast.trainer.max_steps) == ("alternating",
                                                                                              "reflect", 9, None)
    assert dict(fast.trainer.ema) == {"decay": pytest.approx(0.95 ** 5, abs=1e-5), "every": 5, "warmup": "cubic",
                                      "lookahead": True}
    assert (c.trainer.epochs, c.trainer.max_steps) == (10, 476)  # airbench94's ceil(9.9 x 48)
    fast.trainer.epochs, fast.trainer.max_steps = c.trainer.epochs, c.trainer.max_steps
    assert c == fast  # the length is the only difference


@pytest.mark.needs_data
def test_airbench94_recipe_ends_on_its_ema_weights(cfg, tmp_path):
    """The recipe's parts together on MNIST (a small run): 2 epochs of 8 steps, lookahead every 5 steps."""
    trainer = build_trainer(cfg("experiment=cifar10_94", "data=mnist", "data.train_subset=2048",
                                "data.batch_size=256", "trainer.epochs=2", "logger=none", "trainer.tta=none"),
                            tmp_path)
    assert trainer.data.val is None and trainer.data.train.flip == "alternating" and trainer.scheduler.total_steps == 16
    summary = trainer.fit()
    assert trainer.ema.updates == 3  # steps 5, 10, 15; step 16 copies the EMA back
    for fast, slow in zip(trainer.model.state_dict().values(), trainer.ema.module.state_dict().values()):
        assert torch.equal(fast, slow)
    assert summary["test_acc"] > 0.5 and "test_acc_ema" not in summary


def leaves(config) -> dict:
    """Every leaf of a config as dotted key -> value (interpolations resolved)."""
    return flatten(OmegaConf.to_container(config, resolve=True))


ABLATIONS = {"random_flip": {"data.flip": True}, "zeros_padding": {"data.pad_mode": "zeros"},
             "no_lookahead": {"trainer.ema.decay": None, "trainer.ema.lookahead": False},
             "bn_momentum_torch": {"model.bn_momentum": 0.1}, "no_bias_scale": {"model.bias_scale": 1.0},
             "no_whiten_from_data": {"model.whiten_from_data": False}, "no_dirac": {"model.dirac": False},
             "no_label_smoothing": {"trainer.label_smoothing": 0.0}, "no_logit_scale": {"model.logit_scale": 1.0}}


def test_each_ablation_takes_out_one_part_of_the_fast_recipe():
    recipe = leaves(compose_cfg("experiment=cifar10_fast", "ablation=none", tiny=False))
    assert recipe == leaves(compose_cfg("experiment=cifar10_fast", tiny=False))
    for name, changed in ABLATIONS.items():
        arm = leaves(compose_cfg("experiment=cifar10_fast", f"ablation={name}", tiny=False))
        assert {k: v for k, v in arm.items() if recipe[k] != v} == changed, name
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        sweep = compose("train", ["experiment=cifar10_ablation"], return_hydra_config=True).hydra.sweeper.params
    shipped = {p.stem for p in (Path(CONFIG_DIR) / "ablation").glob("*.yaml")}
    assert set(sweep.ablation.split(",")) == {"none", *ABLATIONS} == shipped
    assert sweep["trainer.seed"] == "0,1"


@pytest.mark.needs_data
def test_ablation_arms_reach_the_built_model_and_data(tmp_path):
    def built(*overrides):
        return build_trainer(compose_cfg("experiment=cifar10_fast", "data=mnist", "data.train_subset=512",
                                         "logger=none", *overrides), tmp_path)
    recipe, unwhitened, random_flip = built(), built("ablation=no_whiten_from_data"), built("ablation=random_flip")
    assert not recipe.model.whiten.weight.requires_grad and unwhitened.model.whiten.weight.requires_grad
    assert (recipe.data.train.flip, random_flip.data.train.flip) == ("alternating", True)
