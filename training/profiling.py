"""``trainer.profile_steps=N`` (``debug=profile``): a torch.profiler trace of N training steps.

The profiler skips one step, warms up on the next, then records N (``torch.profiler.schedule``), and writes into
``<run dir>/profile/``: the Chrome trace (``*.pt.trace.json``: open it in https://ui.perfetto.dev or
chrome://tracing; TensorBoard shows it with the torch-tb-profiler plugin) and ``ops.txt``, the operators sorted by
their own time.
"""
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

log = logging.getLogger(__name__)


@contextmanager
def profiling(steps: int | None, out_dir: Path, device: torch.device) -> Iterator[Callable[[], None]]:
    """A ``step()`` to call after each training step: the profiler's, or nothing when ``steps`` is None."""
    if not steps:
        yield lambda: None
        return
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    write_trace = tensorboard_trace_handler(str(out_dir))

    def written(profiler: profile) -> None:
        write_trace(profiler)
        sort = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
        (out_dir / "ops.txt").write_text(profiler.key_averages().table(sort_by=sort, row_limit=30) + "\n")
        recorded = min(steps, max(profiler.step_num - 2, 0))  # fewer when the run ended first
        log.info("profile of %d training steps in %s (the *.pt.trace.json opens in https://ui.perfetto.dev; "
                 "ops.txt: operators by their own time)", recorded, out_dir)

    with profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=steps, repeat=1),
                 on_trace_ready=written, record_shapes=True, profile_memory=True, with_stack=False) as profiler:
        yield profiler.step
