"""utils/memory.py: after keep_freed_memory, a training step's large blocks, freed and allocated again by the next
step, stop costing page faults (glibc as it comes unmaps each on free and the kernel faults the next one in, page by
page). Fresh processes: malloc's settings are process-wide."""
import json
import platform
import subprocess
import sys

import pytest

from conftest import REPO

# page faults of each of 8 forward-backward steps of a conv layer whose activations take 128 MiB
PROBE = """
import json, resource, sys, torch
from utils.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
conv, x = torch.nn.Conv2d(3, 64, 3, padding=1), torch.randn(32, 3, 128, 128)
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.relu(conv(x)).square().mean().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def faults_per_step(mode: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's settings are glibc's")
def test_a_steps_freed_blocks_are_reused_without_page_faults():
    system, keep = faults_per_step("system"), faults_per_step("keep")
    assert min(system) > 128 * 2**20 // 4096  # every step faults its activations in anew
    assert sum(keep[-4:]) < 0.05 * sum(system[-4:]), (keep, system)  # the heap grows for a step or two, then serves
