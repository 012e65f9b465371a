"""What a person sees while a command works: a progress bar for each phase that takes seconds (decoding an image
folder, each sanity check, each evaluation, then evaluate.py's pass), through real processes on a real image
folder of PNG files; none where ``trainer.progress_bar`` resolves to false (``auto`` with stderr not a terminal)."""
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
import torch
from torchvision.io import write_png

from conftest import REPO

CHECKS = ("data", "init_loss", "overfit", "gradient_flow", "loss_decrease")
RUN = ("data=cifar10_folder", "data.val_split=20", "data.batch_size=16", "trainer.epochs=1", "trainer.device=cpu",
       "logger=none", "sanity.overfit_steps=5", "sanity.decrease_steps=3")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A CIFAR-shaped image folder: 10 classes, 8 training and 4 test images each, 32x32 RGB PNG files."""
    root = tmp_path_factory.mktemp("folder")
    noise = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("test", 4)):
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=noise)
                write_png(image, str(root / split / f"class{c}" / f"{i}.png"))
    return root


def command(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def labels(stderr: str) -> list[str]:
    """The labels of the tqdm bars drawn on stderr, each once, in the order they first appear (every redraw of a
    bar starts with a carriage return, a line break once read as text: ``label:  40%|####  | 2/5 [...]``)."""
    frames = (re.match(r"(.*?): +\d+%\|", line) for line in stderr.splitlines())
    return list(dict.fromkeys(frame.group(1) for frame in frames if frame))


def test_every_slow_phase_shows_a_bar_named_for_it_and_none_off_a_terminal(folder, tmp_path):
    shown = command("train.py", *RUN, f"data.root={folder}", "trainer.progress_bar=true",
                    f"hydra.run.dir={tmp_path / 'run'}")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert labels(shown.stderr) == ["decoding train/", "decoding test/", "sanity", *(f"sanity: {c}" for c in CHECKS),
                                    "epoch 1/1", "val", "test"]
    assert re.search(r"^decoding train/: .*\| \d+/80 \[", shown.stderr, re.M)  # counting every image
    assert re.search(r"^sanity: data: .*\| 0/5 \[", shown.stderr, re.M)  # counting the checks
    assert "%|" not in shown.stdout  # the log stays clean

    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    evaluated = command("evaluate.py", f"checkpoint={checkpoint}", "trainer.progress_bar=true",
                        f"hydra.run.dir={tmp_path / 'evaluate'}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert labels(evaluated.stderr) == ["decoding train/", "decoding test/", "evaluating (test)"]

    quiet = command("evaluate.py", f"checkpoint={checkpoint}", f"hydra.run.dir={tmp_path / 'quiet'}")  # auto
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "%|" not in quiet.stderr + quiet.stdout and "accuracy" in quiet.stdout


def on_a_terminal(*args: str) -> tuple[int, str]:
    """``train.py`` with stderr (and stdout) on a 120-column pseudo-terminal, as typed in a shell: exit code and
    output (tqdm draws nothing on a terminal 0 columns wide)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # the terminal closed: every process holding it ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=600), b"".join(chunks).decode(errors="replace")


def test_auto_shows_bars_on_a_terminal_but_not_for_jobs_side_by_side(folder, tmp_path):
    """On a terminal ``auto`` draws the bars; the parallel launcher's jobs share that terminal's line, so
    theirs stay off (their prefixed log lines say where each job is)."""
    code, alone = on_a_terminal(*RUN, f"data.root={folder}", f"hydra.run.dir={tmp_path / 'alone'}")
    assert code == 0, alone[-2000:]
    assert "epoch 1/1:" in alone and "decoding train/:" in alone
    code, parallel = on_a_terminal("-m", "hydra/launcher=parallel", "optimizer.lr=0.01,0.1", *RUN,
                                   f"data.root={folder}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 0, parallel[-2000:]
    assert "%|" not in parallel and "[00] " in parallel and "[01] " in parallel and "2 jobs, 0 failed" in parallel
