"""trainer.compile: torch.compile when it works, eager execution with a one-line warning when it does not."""
import functools
import logging

import pytest
import torch

from cli.compose import build_trainer
from training import compiling

pytestmark = pytest.mark.needs_data

SHORT = ("trainer.max_steps=3", "trainer.precision=fp32", "logger=none")


def final_weights(cfg, tmp_path, *overrides):
    trainer = build_trainer(cfg(*SHORT, *overrides), tmp_path)
    trainer.fit()
    return trainer, torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def broken_backend(graph_module, example_inputs):
    raise RuntimeError("no C++ compiler found")


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(cfg, tmp_path, monkeypatch, caplog):
    _, eager = final_weights(cfg, tmp_path / "eager")
    monkeypatch.setattr(compiling.torch, "compile", functools.partial(torch.compile, backend=broken_backend))
    with caplog.at_level(logging.WARNING, logger=compiling.__name__):
        trainer, fallen_back = final_weights(cfg, tmp_path / "compiled", "trainer.compile=true")
    assert isinstance(trainer.forward_model, compiling.CompiledOrEager) and trainer.forward_model.compiled is None
    (record,) = [r for r in caplog.records if r.name == compiling.__name__]
    assert "torch.compile failed" in record.message and "no C++ compiler found" in record.message
    assert torch.equal(fallen_back, eager)  # the failed first call changed nothing: same steps as eager


def test_a_failing_backward_compile_falls_back_to_eager(monkeypatch, caplog):
    """AOTAutograd compiles the backward at the first backward(); that failure must fall back too, not crash."""
    from torch._dynamo.backends.common import aot_autograd

    def broken_backward(graph_module, example_inputs):
        raise RuntimeError("backward lowering failed")

    backend = aot_autograd(fw_compiler=lambda gm, _: gm, bw_compiler=broken_backward)
    monkeypatch.setattr(compiling.torch, "compile", functools.partial(torch.compile, backend=backend))
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    wrapped, x = compiling.maybe_compile(model, True), torch.randn(5, 4)
    with caplog.at_level(logging.WARNING, logger=compiling.__name__):
        wrapped(x).square().sum().backward()
    assert wrapped.compiled is None and "backward lowering failed" in caplog.text
    eager_grad = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(eager_grad, model.parameters()))


def test_compile_wraps_without_copying_the_weights():
    model = torch.nn.Linear(3, 2)
    wrapped = compiling.maybe_compile(model, True)
    assert list(wrapped.parameters()) == list(model.parameters())
    assert list(wrapped.state_dict()) == ["module.weight", "module.bias"]
    assert compiling.maybe_compile(model, False) is model


@pytest.mark.slow
def test_inductor_compiled_training_matches_eager(cfg, tmp_path):
    _, eager = final_weights(cfg, tmp_path / "eager")
    trainer, compiled = final_weights(cfg, tmp_path / "compiled", "trainer.compile=true")
    assert trainer.forward_model.compiled is not None  # compiled for real, no fallback
    assert torch.allclose(compiled, eager, atol=1e-5)
