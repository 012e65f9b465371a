"""A stand-in for torch.cuda (and torch.distributed's start-up) on a machine without a GPU: it records what the
code asks of the GPUs, in order, and answers as N GPUs of given compute capabilities would."""
import torch
import torch.distributed as dist


class FakeCuda:
    """``capabilities[i]`` is cuda:i's compute capability; ``calls`` lists (what, argument) in call order."""

    def __init__(self, monkeypatch, capabilities=((8, 0),), names=None):
        self.capabilities, self.names = list(capabilities), names or ["NVIDIA A100"] * len(capabilities)
        self.current, self.calls = 0, []
        for name, fake in {"is_available": lambda: True, "device_count": lambda: len(self.capabilities),
                           "is_initialized": lambda: True, "current_device": lambda: self.current,
                           "set_device": self.set_device, "get_device_capability": self.capability,
                           "get_device_name": lambda device=None: self.names[self.index(device)],
                           "set_rng_state": self.set_rng_state, "get_rng_state": self.get_rng_state}.items():
            monkeypatch.setattr(torch.cuda, name, fake)
        monkeypatch.setattr(torch.cuda.random, "set_rng_state", self.set_rng_state)  # set_rng_state_all calls it
        monkeypatch.setattr(dist, "is_initialized", lambda: False)
        monkeypatch.setattr(dist, "init_process_group", lambda **kw: self.calls.append(("init_process_group", kw)))

    def index(self, device) -> int:
        index = device if isinstance(device, int) else None if device is None else torch.device(device).index
        index = self.current if index is None else index
        if index >= len(self.capabilities):  # as torch: default_generators[index], device properties[index]
            raise IndexError(f"cuda:{index} does not exist: {len(self.capabilities)} GPU(s) visible")
        return index

    def set_device(self, device) -> None:
        self.current = self.index(device)
        self.calls.append(("set_device", torch.device("cuda", self.current)))

    def capability(self, device=None) -> tuple[int, int]:
        return self.capabilities[self.index(device)]

    def set_rng_state(self, state, device="cuda") -> None:
        self.calls.append(("set_rng_state", (self.index(device), state)))

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        return torch.full((16,), self.index(device), dtype=torch.uint8)
