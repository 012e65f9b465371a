"""utils/memory.py: after keep_freed_memory, large blocks freed and allocated again, as in every training step, stop
costing page faults (glibc as it comes unmaps each on free and the kernel faults the next one in, page by page).
Fresh processes: malloc's settings are process-wide."""
import json
import platform
import subprocess
import sys

import pytest

from conftest import REPO

# 12 rounds of a step's pattern (a 256 MiB block filled and freed, small objects made after it): page faults per round
PROBE = """
import json, resource, sys, torch
from utils.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block, small = torch.ones(64 * 2**20), [object() for _ in range(1000)]
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""
PAGES = 256 * 2**20 // 4096


def faults_per_round(mode: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's settings are glibc's")
def test_freed_blocks_are_reused_without_page_faults():
    assert all(f >= 0.9 * PAGES for f in faults_per_round("system"))  # every page of every new block faults in
    assert all(f < 0.01 * PAGES for f in faults_per_round("keep")[-4:])  # the heap grows a few rounds, then reuses
