"""Nothing lost: SIGKILL at any moment leaves a loadable last.pt and ``trainer.resume=auto`` finishes the run
exactly; SIGINT/SIGTERM save and exit 128+signal; a full disk fails the write cleanly; keep_last_k holds."""
import errno
import io
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import DATA_ROOT, REPO
from test_resume import assert_same, final_state, metrics
from cli.compose import train
from cli.errors import exit_cleanly, exit_on_user_error
from training import checkpoint
from utils.io import atomic_write

# 16 steps per epoch, a checkpoint after every step: kills land in and between checkpoint writes.
RUN = ("trainer.device=cpu", "trainer.sanity=skip", "trainer.progress_bar=false", "logger=none", "optimizer=momentum",
       "scheduler=cosine", f"data.root={DATA_ROOT}", "data.train_subset=512", "data.val_subset=256",
       "data.test_subset=256",
       "data.batch_size=32", "model.dropout=0.2", "trainer.epochs=2", "trainer.checkpoint_every_n_steps=1",
       "trainer.resume=auto")


def start(run_dir, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", *RUN, *extra, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 240.0) -> bool:
    """Poll ``condition()`` every 10 ms; False when the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise TimeoutError(f"{proc.args} made no progress in {timeout}s")


def newer_than(path, moment: float):
    return lambda: path.exists() and path.stat().st_mtime > moment


def temporaries(directory) -> set:
    return set(directory.glob(".last.pt.*.tmp")) if directory.is_dir() else set()


def mid_write(directory):
    """A temporary checkpoint file that was not there before: this attempt is writing it now."""
    left_by_a_kill = temporaries(directory)
    return lambda: bool(temporaries(directory) - left_by_a_kill)


@pytest.mark.needs_data
def test_sigkill_at_random_moments_then_resume_auto_equals_an_uninterrupted_run(tmp_path):
    rng = random.Random(9)
    reference = start(tmp_path / "reference")  # runs beside the first attempt
    run_dir, last = tmp_path / "killed", tmp_path / "killed" / "checkpoints" / "last.pt"
    moments = ["startup", "mid-write", "random", "mid-write"]  # then one attempt runs to the end
    steps, kills = [], 0
    for moment in [*moments, None]:
        launched = time.time()
        proc = start(run_dir)
        if moment == "startup":
            time.sleep(rng.uniform(0.2, 3.0))
            alive = proc.poll() is None
        elif moment == "mid-write":  # after this attempt's first checkpoint, inside a later write
            alive = wait_for(newer_than(last, launched), proc)
            time.sleep(rng.uniform(0.0, 0.2))
            alive = alive and wait_for(mid_write(last.parent), proc)
        elif moment == "random":
            alive = wait_for(newer_than(last, launched), proc)
            time.sleep(rng.uniform(0.0, 0.3))
        if moment is not None and alive and proc.poll() is None:
            proc.kill()  # SIGKILL: no handler runs
            kills += 1
        out, err = proc.communicate(timeout=240)
        if moment is None or proc.returncode == 0:
            assert proc.returncode == 0, err
            break
        assert proc.returncode == -signal.SIGKILL, (moment, proc.returncode, err)
        if last.exists():
            steps.append(checkpoint.load(last)["global_step"])  # loadable whenever the kill came
    assert reference.wait(timeout=240) == 0, reference.stderr.read()
    assert kills >= 3 and len(steps) >= 2 and steps == sorted(steps), (kills, steps)
    assert_same(final_state(tmp_path / "reference"), final_state(run_dir))
    assert metrics(tmp_path / "reference") == metrics(run_dir)
    assert not temporaries(last.parent)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A SIGINT and a SIGTERM, each sent to a real run once it has written a checkpoint; both at once."""
    tmp = tmp_path_factory.mktemp("signals")
    # 1,600 steps: neither run can finish while the other starts up (a finished run ignores its signal)
    runs = {sig: (tmp / sig.name, start(tmp / sig.name, "trainer.epochs=100"))
            for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, (run_dir, proc) in runs.items():
        assert wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists(), proc), proc.communicate()
        proc.send_signal(sig)
    return {sig: (run_dir, proc, *proc.communicate(timeout=240)) for sig, (run_dir, proc) in runs.items()}


@pytest.mark.needs_data
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_save_and_exit_128_plus_signal(interrupted, sig):
    run_dir, proc, out, err = interrupted[sig]
    assert proc.returncode == 128 + sig, err
    (line,) = err.strip().splitlines()
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert line == (f"stopped by {sig.name} at step {state['global_step']}; checkpoint saved. Continue with the same "
                    f"command plus trainer.resume=auto hydra.run.dir={run_dir}")
    assert 0 < state["global_step"] < 100 * 16 and "Traceback" not in err


def test_a_signal_outside_the_training_loop_exits_128_plus_signal(capsys):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped, exit_cleanly():
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. while the data loads: the handler raises at the next bytecode
        time.sleep(5)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.startswith("stopped by SIGTERM outside training; nothing new to save")
    assert signal.getsignal(signal.SIGTERM) is before


class FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data)[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)


@pytest.mark.needs_data
def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(cfg, tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, f):
        calls.append(f)
        real_save(obj, f if len(calls) < 3 else FullDisk(f, room=20_000))  # the third write fails half-way

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    with pytest.raises(SystemExit) as stopped, exit_on_user_error():
        train(cfg("trainer.checkpoint_every_n_steps=1", "logger=none"), tmp_path)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(calls) == 3
    assert lines == [f"error: could not write a checkpoint to {tmp_path / 'checkpoints'} (No space left on device); "
                     f"last.pt holds the last complete checkpoint. Free space or fix the folder, then continue "
                     f"with trainer.resume=auto"]
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["global_step"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt"]  # no temporary file left


@pytest.mark.needs_data
def test_checkpoints_are_kept_to_keep_last_k(cfg, tmp_path):
    train(cfg("trainer.checkpoint_every_n_steps=1", "trainer.max_steps=7", "trainer.keep_last_k=3", "logger=none"),
          tmp_path)
    saved = tmp_path / "checkpoints"
    assert sorted(p.name for p in saved.iterdir()) == ["best.pt", "last.pt", "step-000000005.pt",
                                                       "step-000000006.pt", "step-000000007.pt"]
    assert [checkpoint.load(saved / f"step-00000000{n}.pt")["global_step"] for n in (5, 6, 7)] == [5, 6, 7]
    assert os.path.samefile(saved / "last.pt", saved / "step-000000007.pt")


def test_kills_during_checkpoint_writes_never_tear_last_pt(tmp_path):
    """A forked writer saves checkpoints (with step links and best.pt) in a loop; SIGKILL it at 30 random
    moments: last.pt always loads, and holds a step no older than the one seen before the kill."""
    rng, seen = random.Random(0), 0
    state = {**dict.fromkeys(checkpoint.REQUIRED, 0), "model": {"w": torch.randn(512, 512)}}
    for attempt in range(30):
        pid = os.fork()
        if pid == 0:  # the writer: never returns into pytest
            try:
                for step in range(seen + 1, seen + 1000):
                    checkpoint.save({**state, "global_step": step}, tmp_path, keep_last_k=2, best=step % 3 == 0)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if (tmp_path / "last.pt").exists():
            step = checkpoint.load(tmp_path / "last.pt")["global_step"]
            assert step >= seen, (attempt, step, seen)
            seen = step
    assert seen > 0


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def fail_half_way(f):
        f.write("new, but not all of it")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, fail_half_way, mode="w")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run as TensorBoard shows it (events a restart purged left out): tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def kill_when(proc: subprocess.Popen, last, wanted) -> dict:
    """SIGKILL ``proc`` right after it writes a checkpoint for which ``wanted(state)`` holds: at each new
    ``last.pt`` the process is stopped (SIGSTOP) while the file is read, so the kill lands at that checkpoint."""
    seen = last.stat().st_mtime_ns if last.exists() else 0
    while True:
        assert wait_for(lambda: last.exists() and last.stat().st_mtime_ns != seen, proc), proc.communicate()
        proc.send_signal(signal.SIGSTOP)
        seen, state = last.stat().st_mtime_ns, checkpoint.load(last)
        if wanted(state):
            proc.kill()
            proc.communicate(timeout=60)
            return state
        proc.send_signal(signal.SIGCONT)


@pytest.mark.needs_data
def test_sigkill_then_resume_keeps_every_tensorboard_scalar(tmp_path):
    """A run killed just after its epoch-1 checkpoint, resumed, killed just after a mid-epoch checkpoint, resumed
    to the end shows in TensorBoard, tag by tag and step by step, what a run that never stopped shows: the
    checkpointed epoch's val/* and train/epoch_*, the loss scale at the mid-epoch checkpoint, nothing twice."""
    tb = ("logger=tensorboard", "logger.log_every_n_steps=1", "monitor.every_n_steps=5", "trainer.precision=fp16",
          "trainer.epochs=3", "trainer.checkpoint_every_n_steps=null")
    reference = start(tmp_path / "reference", *tb)
    run_dir = tmp_path / "killed"
    last = run_dir / "checkpoints" / "last.pt"
    epoch_end = kill_when(start(run_dir, *tb), last, lambda state: True)  # epoch ends only: step 16
    mid_epoch = kill_when(start(run_dir, *tb, "trainer.checkpoint_every_n_steps=3"), last,
                          lambda state: state["step_in_epoch"] > 0)
    finish = start(run_dir, *tb)
    assert finish.wait(timeout=240) == 0, finish.communicate()
    assert reference.wait(timeout=240) == 0, reference.communicate()
    assert (epoch_end["global_step"], epoch_end["step_in_epoch"]) == (16, 0)
    assert 16 < mid_epoch["global_step"] < 48 and mid_epoch["global_step"] % 3 == 0
    expected, shown = tensorboard_scalars(tmp_path / "reference"), tensorboard_scalars(run_dir)
    assert {"val/acc", "train/epoch_loss", "watch/amp_loss_scale", "weights/grad_norm/head",
            "test/acc"} <= expected.keys()
    assert shown.keys() == expected.keys()
    for tag in expected.keys() - {"time/train_seconds", "time/images_per_sec"}:  # clock readings differ
        assert shown[tag] == expected[tag], tag


# train.py, run as ``python train.py ...`` is, with a disk that fills after 100 TensorBoard records
DISK_FILLS_IN_THE_WRITER_THREAD = """
import errno, os, runpy, sys
from tensorboard.summary.writer.record_writer import RecordWriter
run_dir = next(arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("hydra.run.dir="))
real_write = RecordWriter.write
def write_until_the_disk_fills(self, data):  # the disk fills once the first checkpoint is on it
    if os.path.exists(os.path.join(run_dir, "checkpoints", "last.pt")):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_write(self, data)
RecordWriter.write = write_until_the_disk_fills
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.needs_data
def test_full_disk_in_the_tensorboard_writer_thread_is_one_line(tmp_path):
    """TensorBoard writes from a thread of its own: its failure stops the run with one line naming the folder, no
    thread traceback, and the last checkpoint holds what was logged before it."""
    run = [a for a in RUN if a not in ("logger=none", "trainer.resume=auto", "trainer.checkpoint_every_n_steps=1")]
    result = subprocess.run([sys.executable, "-c", DISK_FILLS_IN_THE_WRITER_THREAD, *run, "trainer.epochs=3",
                             "logger.log_every_n_steps=1", f"hydra.run.dir={tmp_path}"], cwd=REPO, text=True,
                            capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: could not write TensorBoard events to {tmp_path / 'tb'} (No space left on device); the checkpoints "
        f"hold what was logged before them. Free space or fix the folder, then continue with trainer.resume=auto"], \
        result.stderr
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["epoch"] in (1, 2)
