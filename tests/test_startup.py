"""Start-up stays light: train.py imports what a command uses and no more. optuna (Hydra imports every sweeper
plugin at start-up) and torchvision (it pulls in torch._dynamo, as a run's first optimizer does) each cost seconds
of a launch, and the suite launches train.py hundreds of times."""
import subprocess
import sys

import pytest

from conftest import REPO, TINY

HEAVY = ("optuna", "torchvision", "torch._dynamo")
# train.py in this process, then, at exit, which of HEAVY it imported
PROBE = ("import atexit, runpy, sys\n"
         f"atexit.register(lambda: print('imported:', *[m for m in {HEAVY!r} if m in sys.modules]))\n"
         "sys.argv = ['train.py', *sys.argv[1:]]\n"
         "runpy.run_path('train.py', run_name='__main__')\n")


def imported(*args: str) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout.splitlines()[-1].split()[1:]


def test_a_config_error_answers_before_any_heavy_import():
    assert imported("optimizer=sgdd") == (2, [])


@pytest.mark.needs_data
def test_a_run_imports_torchvision_for_its_data_but_not_optuna(tmp_path):
    assert imported(*TINY, "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}") == (0, ["torchvision",
                                                                                             "torch._dynamo"])
