"""The results ledger: every launch of a run is recorded (command, commit, machine), and analysis.publish turns a
finished run into results/<name>/ without ever writing half an entry or over another one. Real train.py runs."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import DATA_ROOT, REPO
from utils.io import umask

pytestmark = pytest.mark.needs_data

TINY = ["data=mnist", f"data.root={DATA_ROOT}", "data.train_subset=256", "data.val_subset=128", "trainer.device=cpu",
        "trainer.progress_bar=false", "sanity.checks=[overfit]", "sanity.overfit_steps=5"]


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run of 2 steps, then resumed (nothing left to train): two launches."""
    run_dir = tmp_path_factory.mktemp("run") / "mnist"
    for resume in ([], ["trainer.resume=auto"]):
        proc = python("train.py", *TINY, "trainer.max_steps=2", f"hydra.run.dir={run_dir}", *resume)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir


def head() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_every_launch_records_its_command_commit_and_machine(finished_run):
    first, second = [json.loads(line) for line in (finished_run / "launches.jsonl").read_text().splitlines()]
    assert first["command"].startswith("python train.py data=mnist ") and "trainer.max_steps=2" in first["command"]
    assert second["command"] == first["command"] + " trainer.resume=auto"
    assert first["commit"] == second["commit"] == head() and isinstance(first["dirty"], bool)
    machine = first["machine"]
    assert machine["cores"] >= 1 and machine["memory_gib"] > 0 and machine["cpu"] and machine["gpus"] == []
    assert machine["torch"].startswith("2.14")


def test_publish_writes_the_entry_and_refuses_to_write_over_it(finished_run, tmp_path):
    args = ["-m", "analysis.publish", f"run_dir={finished_run}", "name=mnist_tiny", f"results={tmp_path}"]
    proc = python(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = tmp_path / "mnist_tiny"
    summary = json.loads((finished_run / "summary.json").read_text())
    assert f"published {entry}: test acc {summary['test_acc']:.4f}, best val acc " in proc.stdout
    assert entry.stat().st_mode & 0o777 == 0o777 & ~umask()
    assert {p.stat().st_mode & 0o777 for p in entry.iterdir()} == {0o666 & ~umask()}
    assert sorted(p.name for p in entry.iterdir()) == ["command.txt", "metrics.jsonl", "provenance.json",
                                                       "summary.json"]
    for copied in ("summary.json", "metrics.jsonl"):
        assert (entry / copied).read_bytes() == (finished_run / copied).read_bytes()
    launches = (finished_run / "launches.jsonl").read_text().splitlines()
    assert (entry / "command.txt").read_text() == json.loads(launches[0])["command"] + "\n"
    provenance = json.loads((entry / "provenance.json").read_text())
    assert provenance["commits"] == [head()] and len(provenance["launches"]) == 2
    assert provenance["machine"] == json.loads(launches[0])["machine"]

    before = {p.name: p.read_bytes() for p in entry.iterdir()}
    again = python(*args)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "name='mnist_tiny' is invalid" in again.stderr and "holds a published run" in again.stderr
    assert {p.name: p.read_bytes() for p in entry.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["mnist_tiny"]  # no staging folder left behind


def test_a_run_from_before_launches_were_recorded_needs_its_commit(finished_run, tmp_path):
    old = tmp_path / "old_run"
    shutil.copytree(finished_run, old, ignore=shutil.ignore_patterns("launches.jsonl", "checkpoints", "tb"))
    args = ["-m", "analysis.publish", f"run_dir={old}", "name=old", f"results={tmp_path / 'results'}"]
    refused = python(*args)
    assert refused.returncode == 2 and "records no git commit" in refused.stderr and "commit=<hash>" in refused.stderr
    assert not (tmp_path / "results" / "old").exists()
    proc = python(*args, "commit=0123abc")
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = tmp_path / "results" / "old"
    command = (entry / "command.txt").read_text()
    assert command.startswith("python train.py data=mnist ") and "trainer.resume=auto" in command  # Hydra's last record
    provenance = json.loads((entry / "provenance.json").read_text())
    assert provenance["commits"] == ["0123abc"] and provenance["machine"]["recorded"] == "at publish time"


def test_an_unfinished_run_is_not_published(finished_run, tmp_path):
    failed = tmp_path / "failed_run"
    shutil.copytree(finished_run, failed, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    summary = json.loads((failed / "summary.json").read_text())
    (failed / "summary.json").write_text(json.dumps({**summary, "status": "failed", "error": "diverged"}))
    proc = python("-m", "analysis.publish", f"run_dir={failed}", "name=x", f"results={tmp_path / 'results'}")
    assert proc.returncode == 2 and "a finished run" in proc.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
