"""Nothing lost, round 2, through the real command line: a run directory holds one run and one process (a
fresh start over a run and a second process are refused in one line), ``resume=auto`` finds the newest
complete checkpoint, a torn metrics line is dropped, files respect the umask, SIGHUP saves like SIGTERM
and a second signal does not cut the stop short, and broken data is named file by file. The
``python train.py`` processes of the module run side by side (each pays for importing torch)."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from torchvision.io import encode_jpeg

from conftest import CIFAR_FOLDER, DATA_ROOT, REPO, compose_cfg, read_mnist_once
from test_errors import assert_one_line_error, overwrite_weight_bytes
from training import checkpoint
from cli.compose import build_trainer, train

pytestmark = pytest.mark.needs_data
mnist_once = pytest.fixture(autouse=True, scope="module")(read_mnist_once)

B = ("trainer.sanity=skip", "trainer.device=cpu", "trainer.progress_bar=false", "data=mnist", "model=mlp",
     "data.train_subset=512", "data.val_subset=256", "data.batch_size=32", "trainer.epochs=2")
UMASK = 0o027  # every file a run writes: 0640


def train_py(*args: str, **popen) -> subprocess.Popen:
    """``python train.py [-m] B... ARGS...`` (Hydra's flags come before the overrides)."""
    flags = [arg for arg in args if arg == "-m"]
    overrides = [arg for arg in args if arg != "-m"]
    return subprocess.Popen([sys.executable, "train.py", *flags, *B, f"data.root={DATA_ROOT}", *overrides], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.umask(UMASK), **popen)


def finish(procs: dict[str, subprocess.Popen]) -> dict[str, subprocess.CompletedProcess]:
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def snapshot(run_dir) -> dict:
    """The run's files, less Hydra's (``.hydra/``, ``train.log``) and the lock's holder PID."""
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts
            and p.name not in ("train.log", ".lock")}


# ---------------------------------------------------------------------------------------------- run directory
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directories prepared in-process, then one train.py per case, four at a time."""
    tmp = tmp_path_factory.mktemp("runs")
    train(compose_cfg(f"data.root={DATA_ROOT}", *B), tmp / "finished")
    shutil.copytree(tmp / "finished", tmp / "torn")
    with open(tmp / "torn" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_loss": 0.4')  # the disk filled up during an append
    paused = compose_cfg(f"data.root={DATA_ROOT}", *B, "trainer.max_steps=8", "trainer.checkpoint_every_n_steps=1",
                         "trainer.keep_last_k=3", "logger=none")
    build_trainer(paused, tmp / "no_last").fit(stop_after_steps=6)  # step-4, 5, 6.pt and last.pt
    (tmp / "no_last" / "checkpoints" / "last.pt").unlink()
    shutil.copytree(tmp / "no_last", tmp / "bad_step")
    newest = tmp / "bad_step" / "checkpoints" / "step-000000006.pt"
    overwrite_weight_bytes(newest, newest, bytes)  # a zeroed block: fails its checksum
    before = {name: snapshot(tmp / name) for name in ("finished",)}
    cases = {
        "fresh over a run": ["trainer.epochs=1", f"hydra.run.dir={tmp / 'finished'}"],
        "torn metrics line": ["trainer.resume=auto", f"hydra.run.dir={tmp / 'torn'}"],
        "no last.pt": ["trainer.resume=auto", "trainer.max_steps=8", "trainer.checkpoint_every_n_steps=1",
                       "trainer.keep_last_k=3", "logger=none", f"hydra.run.dir={tmp / 'no_last'}"],
        "corrupt newest step": ["trainer.resume=auto", "trainer.max_steps=8", "trainer.keep_last_k=3", "logger=none",
                                f"hydra.run.dir={tmp / 'bad_step'}"],
        "umask": ["trainer.max_steps=2", f"hydra.run.dir={tmp / 'umask'}"],
    }
    results = {}
    for i in range(0, len(cases), 4):
        results.update(finish({name: train_py(*cases[name]) for name in list(cases)[i:i + 4]}))
    return tmp, results, before


def test_a_fresh_start_over_a_run_is_refused_and_touches_nothing(runs):
    tmp, results, before = runs
    assert_one_line_error(results["fresh over a run"], f"{tmp / 'finished'} already holds a run (checkpoints/",
                          "metrics.jsonl); continue it with trainer.resume=auto, or start anew with another "
                          "hydra.run.dir")
    assert snapshot(tmp / "finished") == before["finished"]


def finished_log(runs, case: str, directory: str) -> str:
    """The train.log of ``case``'s run in ``directory``, after asserting that the run exited 0."""
    tmp, results, _ = runs
    assert results[case].returncode == 0, results[case].stderr
    return (tmp / directory / "train.log").read_text()


def test_a_torn_metrics_line_is_dropped_and_said(runs):
    tmp, _, _ = runs
    log = finished_log(runs, "torn metrics line", "torn")
    assert f"{tmp / 'torn' / 'metrics.jsonl'}: dropped 1 line(s) that do not parse" in log
    records = [json.loads(line) for line in (tmp / "torn" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "train_loss" in r] == [1, 2]
    assert sum("test_acc" in r for r in records) == 1  # the test scores once, rewritten by the resumed run's end


def test_resume_auto_without_last_pt_continues_from_the_newest_step_file(runs):
    tmp, _, _ = runs
    saved = tmp / "no_last" / "checkpoints"
    log = finished_log(runs, "no last.pt", "no_last")
    assert f"resumed from {saved / 'step-000000006.pt'} at epoch 0, step 6" in log
    assert sorted(p.name for p in saved.glob("step-*.pt")) == [f"step-00000000{n}.pt" for n in (6, 7, 8)]
    assert checkpoint.load(saved / "last.pt")["global_step"] == 8


def test_resume_auto_passes_over_a_corrupt_checkpoint(runs):
    tmp, _, _ = runs
    log = finished_log(runs, "corrupt newest step", "bad_step")
    assert f"passing over {tmp / 'bad_step' / 'checkpoints' / 'step-000000006.pt'} fails its checksum" in log
    assert f"resumed from {tmp / 'bad_step' / 'checkpoints' / 'step-000000005.pt'} at epoch 0, step 5" in log


def test_files_the_run_writes_respect_the_umask(runs):
    tmp, results, _ = runs
    assert results["umask"].returncode == 0, results["umask"].stderr
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "summary.json", "metrics.jsonl"):
        assert (tmp / "umask" / name).stat().st_mode & 0o777 == 0o666 & ~UMASK, name


def test_step_files_are_pruned_by_the_step_they_hold(tmp_path):
    """Names are zero-padded to 9 digits: past step 999,999,999 name order is not step order."""
    state = {**dict.fromkeys(checkpoint.REQUIRED, 0), "model": {}}
    for step in (999_999_998, 999_999_999, 1_000_000_000, 1_000_000_001):
        checkpoint.save({**state, "global_step": step}, tmp_path, keep_last_k=2)
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-1000000000.pt", "step-1000000001.pt"]


# ---------------------------------------------------------------------------------------- lock and signals
def started(*run_dirs) -> list[subprocess.Popen]:
    """Long runs (1,600 steps, a checkpoint every step), each once it has written its first checkpoint."""
    long_run = ("trainer.epochs=100", "trainer.checkpoint_every_n_steps=1", "logger=none", "optimizer.lr=0.01")
    procs = [train_py(*long_run, f"hydra.run.dir={run_dir}") for run_dir in run_dirs]
    deadline = time.monotonic() + 240
    for run_dir, proc in zip(run_dirs, procs):
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
    return procs


@pytest.fixture(scope="module")
def signalled(tmp_path_factory):
    """Run A holds its directory while B tries to resume there; then A gets SIGHUP. Run C gets a SIGTERM every
    5 ms until it exits: the later ones land in the save the first one started, and in the way out."""
    tmp = tmp_path_factory.mktemp("signals")
    a, c = started(tmp / "a", tmp / "c")
    second = finish({"b": train_py("trainer.resume=auto", "logger=none", f"hydra.run.dir={tmp / 'a'}")})["b"]
    a.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 120
    while c.poll() is None and time.monotonic() < deadline:
        c.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    return tmp, a.pid, second, finish({"a": a, "c": c})


def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(signalled):
    tmp, pid, second, _ = signalled
    assert_one_line_error(second, f"error: {tmp / 'a'} is in use by process {pid} (it holds {tmp / 'a' / '.lock'}); "
                                  f"wait for it to end, or give another hydra.run.dir")


@pytest.mark.parametrize("run,sig", [("a", signal.SIGHUP), ("c", signal.SIGTERM)], ids=["SIGHUP", "SIGTERM repeated"])
def test_sighup_and_repeated_signals_save_and_exit_128_plus_signal(signalled, run, sig):
    tmp, _, _, results = signalled
    result = results[run]
    assert result.returncode == 128 + sig, result.stderr
    step = checkpoint.load(tmp / run / "checkpoints" / "last.pt")["global_step"]
    assert result.stderr.strip().splitlines() == [
        f"stopped by {sig.name} at step {step}; checkpoint saved. Continue with the same command plus "
        f"trainer.resume=auto hydra.run.dir={tmp / run}"]
    assert not list((tmp / run / "checkpoints").glob(".*.tmp"))


def test_the_lock_is_released_when_the_holder_ends(signalled):
    tmp = signalled[0]
    with open(tmp / "a" / ".lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if anyone still held it


# ----------------------------------------------------------------------------------------------- bad data
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def mnist_copy(root, change: str, edit) -> str:
    """A copy of MNIST under ``root`` whose ``change`` file is ``edit(bytes)``; the others are links."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        source = DATA_ROOT / "MNIST" / "raw" / name
        (raw / name).write_bytes(edit(source.read_bytes())) if name == change else (raw / name).symlink_to(source)
    return str(raw / change)


def image_folder(root, classes: dict[str, list[str]]) -> None:
    """``root/{train,test}/<class>/`` holding real CIFAR-10 JPEGs: ``classes[split]`` names its folders."""
    for split, names in classes.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
            for source in sorted((CIFAR_FOLDER / "train" / name).glob("*.jpg"))[:4]:
                shutil.copy(source, root / split / name / source.name)


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    files = {
        "truncated idx": mnist_copy(tmp / "truncated", "t10k-images-idx3-ubyte", lambda b: b[: len(b) // 2]),
        "bad magic": mnist_copy(tmp / "magic", "train-labels-idx1-ubyte", lambda b: b"\x00\x00\x09\x01" + b[4:]),
        "label 255": mnist_copy(tmp / "label", "t10k-labels-idx1-ubyte", lambda b: b[:8 + 17] + b"\xff" + b[8 + 18:]),
    }
    three = ["airplane", "automobile", "bird"]
    image_folder(tmp / "missing", {"train": three, "test": three[::2]})
    image_folder(tmp / "extra", {"train": three, "test": [*three, "cat"]})
    image_folder(tmp / "undecodable", {"train": three, "test": three})
    files["undecodable"] = str(tmp / "undecodable" / "train" / "bird" / "broken.jpg")
    (tmp / "undecodable" / "train" / "bird" / "broken.jpg").write_bytes(os.urandom(600))
    image_folder(tmp / "size", {"train": three, "test": three})
    files["size"] = str(tmp / "size" / "test" / "bird" / "small.jpg")
    (tmp / "size" / "test" / "bird" / "small.jpg").write_bytes(encode_jpeg(torch.zeros(3, 16, 16, dtype=torch.uint8))
                                                               .numpy().tobytes())
    folder = ["data=cifar10_folder", "data.num_classes=3", "data.train_subset=null", "data.val_subset=null",
              "data.batch_size=4"]
    cases = {"truncated idx": [f"data.root={tmp / 'truncated'}"], "bad magic": [f"data.root={tmp / 'magic'}"],
             "label 255": [f"data.root={tmp / 'label'}"],
             **{name: [*folder, f"data.root={tmp / name}"] for name in ("missing", "extra", "undecodable", "size")}}
    results = {}
    for i in range(0, len(cases), 4):
        results.update(finish({name: train_py(*args, f"hydra.run.dir={tmp / 'runs' / name.replace(' ', '_')}")
                               for name, args in list(cases.items())[i:i + 4]}))
    return tmp, files, results


DATA_CASES = {
    "truncated idx": ["{file} is truncated: 3920008 bytes, its header promises 7840016 (10000 x 28 x 28 values)"],
    "bad magic": ["{file} is not an idx file of 1-d unsigned bytes: magic number 00000901, expected 00000801"],
    "label 255": ["the test split of mnist at data.root=", "has label 255 at example 17 (1 such), outside [0, 10)"],
    "missing": ["the class folders of {tmp}/missing/train and {tmp}/missing/test differ (only in train/: automobile)"],
    "extra": ["the class folders of {tmp}/extra/train and {tmp}/extra/test differ (only in test/: cat)"],
    "undecodable": ["{file} does not decode as an image", "replace or remove it"],
    "size": ["{file} is 16x16 pixels", "every image needs one size"],
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_broken_data_is_one_line_naming_the_file_and_the_fault(bad_data, case):
    tmp, files, results = bad_data
    assert_one_line_error(results[case], *(text.format(tmp=tmp, file=files.get(case)) for text in DATA_CASES[case]))


# ------------------------------------------------------------------------------- divergence and resume changes
def strict_json(text: str):
    """JSON as the standard has it: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} in JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """Epoch 1 at lr 0.1 (paused in-process after its last step); resumed with optimizer.lr=8 it diverges in
    epoch 2, and is continued as the message advises, at a lower LR. on_nan=skip at lr=1e4: stopped, and let
    through (max_skipped_fraction=1)."""
    tmp = tmp_path_factory.mktemp("diverged")
    run = ["logger=none", f"hydra.run.dir={tmp / 'diverge'}"]
    build_trainer(compose_cfg(f"data.root={DATA_ROOT}", *B, *run[:1]), tmp / "diverge").fit(stop_after_steps=16)
    runs = {"diverge": [*run, "trainer.resume=auto", "optimizer.lr=8"],
            "skip": ["optimizer.lr=1e4", "trainer.on_nan=skip", "logger=none", f"hydra.run.dir={tmp / 'skip'}"],
            "skip all": ["optimizer.lr=1e4", "trainer.on_nan=skip", "trainer.max_skipped_fraction=1",
                         f"hydra.run.dir={tmp / 'skip_all'}"]}
    results = finish({name: train_py(*args) for name, args in runs.items()})
    results["resumed"] = finish({"resumed": train_py(*runs["diverge"], "optimizer.lr=0.05")})["resumed"]
    return tmp, results


def test_divergence_advice_names_the_checkpoint_and_a_command_that_works(diverged):
    tmp, results = diverged
    assert_one_line_error(results["diverge"], "loss became nan at step ", "the last checkpoint (step 16) is intact. "
                          f"Continue from it at a lower LR: the same command plus trainer.resume=auto "
                          f"hydra.run.dir={tmp / 'diverge'} optimizer.lr=<lower> (or trainer.clip.mode=norm)")
    assert results["resumed"].returncode == 0, results["resumed"].stderr  # the advice, followed, works


def test_a_changed_lr_on_resume_applies_and_is_logged(diverged):
    """lr 8 diverged (at the checkpoint's 0.1 it would not have): the change applied, and so did 0.05."""
    tmp, results = diverged
    log = (tmp / "diverge" / "train.log").read_text()
    for change in ("0.1 -> 8", "8 -> 0.05"):
        assert f"resumed with a changed config: optimizer lr {change} (the config's value applies from here on)" in log
    state = checkpoint.load(tmp / "diverge" / "checkpoints" / "last.pt")
    assert state["scheduler"]["base_lrs"] == [0.05, 0.05] and state["global_step"] == 32
    epoch_two = strict_json((tmp / "diverge" / "metrics.jsonl").read_text().splitlines()[1])
    assert epoch_two["epoch"] == 2 and 0 <= epoch_two["lr"] < 0.05  # cosine from 0.05, not from 0.1


def test_on_nan_skip_stops_after_a_fraction_of_an_epoch(diverged):
    tmp, results = diverged
    assert_one_line_error(results["skip"], "trainer.on_nan=skip skipped 9 of the 16 steps of epoch 1",
                          "more than trainer.max_skipped_fraction=0.5; no checkpoint was written yet. Start again "
                          "with a lower optimizer.lr or trainer.clip.mode=norm")
    assert not (tmp / "skip" / "checkpoints" / "last.pt").exists()


def test_no_nan_is_written_into_json(diverged):
    tmp, results = diverged
    assert results["skip all"].returncode == 0, results["skip all"].stderr
    records = [strict_json(line) for line in (tmp / "skip_all" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["val_loss"] is None and records[1]["train_loss"] is None  # epoch 2: every step skipped
    assert strict_json((tmp / "skip_all" / "summary.json").read_text())["finished"]


# ---------------------------------------------------------------------------------------------- sweep resume
def test_an_interrupted_sweep_resumes_job_by_job(tmp_path):
    """A real Hydra multirun of two jobs, SIGTERMed in its first job: the stop line names the sweep, and the same
    sweep plus trainer.resume=auto continues job 0 from its checkpoint and runs job 1, in the same directories."""
    sweep = ["-m", "optimizer.lr=0.01,0.02", "data.train_subset=4096", "trainer.checkpoint_every_n_steps=1",
             "logger=none", f"hydra.sweep.dir={tmp_path}"]
    proc = train_py(*sweep)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("00_*/checkpoints/last.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stopped = finish({"stopped": proc})["stopped"]
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["00_optimizer.lr=0.01"], jobs
    first = tmp_path / jobs[0]
    step = checkpoint.load(first / "checkpoints" / "last.pt")["global_step"]
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"stopped by SIGTERM at step {step}; checkpoint saved. Continue with the same command plus "
        f"trainer.resume=auto hydra.sweep.dir={tmp_path}")
    resumed = finish({"resumed": train_py(*sweep, "trainer.resume=auto")})["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["00_optimizer.lr=0.01", "01_optimizer.lr=0.02"], jobs
    assert f"resumed from {first / 'checkpoints' / 'last.pt'} at epoch 0, step {step}" in (first / "train.log").read_text()
    for job in jobs:
        summary = strict_json((tmp_path / job / "summary.json").read_text())
        assert summary["finished"] and summary["global_step"] == 2 * 4096 // 32, (job, summary)
