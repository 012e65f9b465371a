"""Where a run came from: one line in ``<run dir>/launches.jsonl`` per launch (the first start and every resume).

Each line holds the command line as typed, the git commit of the code (and whether its tracked files had
uncommitted changes), the library versions and the machine, so a result can be traced to what produced it
(``python -m analysis.publish`` copies them into the ``results/`` ledger). Appended, never rewritten: a run resumed
on another machine or at another commit shows every one.
"""
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

LAUNCHES = "launches.jsonl"
REPO = Path(__file__).resolve().parents[1]


def git_commit(repo: Path = REPO) -> dict:
    """{"commit": HEAD's hash, "dirty": tracked files changed since it}; None for each where git cannot tell."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's marketing name (Linux), else what the platform module knows."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The hardware and software a run saw: CPU, cores it may use, memory, GPUs, torch's threads and versions."""
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "memory_gib": round(pages * page_size / 2**30, 1),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": importlib.metadata.version("torchvision")}


def record_launch(run_dir: Path, argv: list[str] | None = None) -> dict:
    """Append this launch to ``run_dir/launches.jsonl``; returns the line written."""
    argv = sys.argv if argv is None else argv
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": shlex.join(["python", *argv]),
             "cwd": os.getcwd(), **git_commit(), "machine": machine()}
    with open(run_dir / LAUNCHES, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


def read_launches(run_dir: Path) -> list[dict]:
    """Every launch ``run_dir`` recorded, first to last ([] for a run from before launches were recorded)."""
    path = run_dir / LAUNCHES
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
