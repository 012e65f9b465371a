import pickle

import pytest
import torch
from hydra.utils import instantiate

from models import AirbenchNet, CNN, MLP, ResNet, init_weights

PAPER_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


@pytest.mark.parametrize("depth,expected", PAPER_PARAMS.items())
def test_resnet_parameter_counts_match_the_paper(depth, expected):
    model = ResNet(depth=depth)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name", ["mlp", "deep_mlp", "cnn", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"])
@pytest.mark.parametrize("data", ["mnist", "cifar10"])
def test_every_model_config_builds_from_the_data_config(cfg, name, data):
    c = cfg(f"model={name}", f"data={data}")
    model = instantiate(c.model)
    x = torch.randn(3, c.data.in_channels, c.data.image_size, c.data.image_size)
    assert model(x).shape == (3, c.data.num_classes)


@pytest.mark.parametrize("model", [MLP(in_channels=3, image_size=8, num_classes=10, hidden_sizes=[16]),
                                   CNN(in_channels=3, num_classes=10, channels=[8, 8]), ResNet(depth=8)])
def test_the_classifier_head_runs_in_float32_under_bf16_autocast(model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(4, 3, 8, 8))
        features = torch.nn.Linear(3, 3)(torch.randn(2, 3))
    assert features.dtype == torch.bfloat16 and logits.dtype == torch.float32


def test_resnet_switches():
    plain = ResNet(depth=20, skip=False)
    no_bn = ResNet(depth=20, batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in no_bn.modules())
    assert all(not b.skip for b in plain.modules() if hasattr(b, "skip"))
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    a = ResNet(depth=20)
    torch.manual_seed(0)
    b = ResNet(depth=20, skip=False)
    assert not torch.allclose(a(x), b(x))  # same weights, the shortcut changes the function


def test_shortcut_pads_channels_and_subsamples():
    block = ResNet(depth=20).layer2[0]
    out = block.shortcut(torch.ones(1, 16, 32, 32))
    assert out.shape == (1, 32, 16, 16)
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0 and out[:, 8:24].eq(1).all()


@pytest.mark.parametrize("make", [lambda: ResNet(depth=20), lambda: MLP(in_channels=1, image_size=28, num_classes=10),
                                  lambda: CNN(in_channels=3, num_classes=10),
                                  lambda: AirbenchNet(in_channels=3, num_classes=10, widths=[8, 16, 16])],
                         ids=["resnet20", "mlp", "cnn", "airbench"])
def test_models_pickle_to_the_same_function(make):
    """DDP's spawn and checkpoint tooling pickle models: the copy computes exactly what the original does."""
    torch.manual_seed(0)
    model = make().eval()
    channels, size = (1, 28) if isinstance(model, MLP) else (3, 32)
    x = torch.randn(2, channels, size, size)
    copy = pickle.loads(pickle.dumps(model))
    assert torch.equal(copy(x), model(x))


@pytest.mark.parametrize("scheme", ["kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "orthogonal"])
def test_init_schemes_change_weights_and_zero_biases(scheme):
    torch.manual_seed(0)
    model = MLP(in_channels=1, image_size=8, num_classes=10, hidden_sizes=[64, 64])
    before = model.layers[1][0].weight.clone()
    init_weights(model, scheme)
    w = model.layers[1][0].weight
    assert not torch.equal(before, w)
    assert model.layers[1][0].bias.abs().sum() == 0
    if scheme == "orthogonal":
        torch.testing.assert_close(w @ w.T, torch.eye(64), atol=1e-5, rtol=0)
    if scheme == "kaiming_normal":
        assert abs(w.std().item() - (2 / 64) ** 0.5) < 0.02


def test_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="model.init='bogus'"):
        MLP(in_channels=1, image_size=8, num_classes=10, init="bogus")
