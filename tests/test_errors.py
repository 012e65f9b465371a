"""Bad input through the real command line: ``python train.py ...`` prints one line on stderr saying what is
wrong and what is allowed, exits 2, shows no traceback, and overwrites nothing. The processes of each group
run side by side (each pays for importing torch), then every case is checked on its own."""
import math
import os
import struct
import subprocess
import sys

import pytest
import torch
from hydra.errors import HydraException

from conftest import DATA_ROOT, REPO, compose_cfg, read_mnist_once
from cli.compose import train
from cli.errors import exit_on_user_error, one_line
from cli.validate import validate
from training import checkpoint

BASE = ("trainer.device=cpu", "trainer.sanity=skip", "trainer.progress_bar=false", "logger=none", "optimizer=sgd",
        "scheduler=constant", "data.train_subset=256", "data.val_subset=128", "trainer.max_steps=2")


mnist_once = pytest.fixture(autouse=True, scope="module")(read_mnist_once)


def run_train_py(cases: dict[str, list[str]], parallel: int = 4) -> dict[str, subprocess.CompletedProcess]:
    """Each case's ``python train.py BASE... ARGS...``, ``parallel`` at a time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done, names = {}, list(cases)
    for i in range(0, len(names), parallel):
        started = {name: subprocess.Popen([sys.executable, "train.py", *BASE, *cases[name]], cwd=REPO, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for name in names[i:i + parallel]}
        for name, proc in started.items():
            out, err = proc.communicate(timeout=300)
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert all(text in lines[0] for text in expected), (expected, lines[0])
    return lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------- bad config values
# data.root is an existing empty folder: reading data from it would fail, so these errors came before any data.
# Every out-of-range value of the issue is checked, message and all, in test_validate.py; here, the command line.
CONFIG_CASES = {
    "unknown group option": (["optimizer=bogus"], ["optimizer='bogus' is not an option of config group optimizer",
                                                  "allowed adagrad, adam, adamw, hessian_free, kfac, lbfgs, lookahead"]),
    "wrong type": (["trainer.epochs=abc"], ["trainer.epochs='abc' is invalid: allowed an integer >= 1"]),
    "out of range": (["optimizer=adam", "optimizer.betas=[0.9,1.5]"],
                     ["optimizer.betas=[0.9, 1.5] is invalid: allowed a list of 2 items, each a number in [0, 1)"]),
    "missing data root": (["data.root={tmp}/nowhere"], ["data.root='{tmp}/nowhere' is invalid: no such folder"]),
    "unwritable run dir": (["hydra.run.dir={tmp}/a_file/run"], ["cannot write the run directory", "Not a directory",
                                                                "hydra.run.dir"]),
    # issue 15 class 14: rules that were checked only once the data had loaded, or not at all
    "monitor threshold": (["monitor.vanish_below=abc"], ["monitor.vanish_below='abc' is invalid: allowed a number"]),
    "monitor limit": (["monitor.explode_above=abc"], ["monitor.explode_above='abc' is invalid: allowed a number > 0"]),
    "flush interval": (["logger.flush_secs=1e10"], ["logger.flush_secs=10000000000.0 is invalid: allowed a number "
                                                    "in (0, 86400]"]),
    "loss scale too large": (["trainer.precision=fp16", "trainer.loss_scale=1e39"],
                             ["trainer.loss_scale=1e+39 is invalid: allowed a number in [1e-38, 1e+38] or null"]),
    "loss scale too small": (["trainer.precision=fp16", "trainer.loss_scale=1e-300"],
                             ["trainer.loss_scale=1e-300 is invalid: allowed a number in [1e-38, 1e+38] or null"]),
}


@pytest.fixture(scope="module")
def config_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "empty_data").mkdir()
    (tmp / "a_file").write_text("")
    cases = {name: [f"data.root={tmp / 'empty_data'}", f"hydra.run.dir={tmp / f'run{i}'}",
                    *(arg.format(tmp=tmp) for arg in args)] for i, (name, (args, _)) in enumerate(CONFIG_CASES.items())}
    return tmp, run_train_py(cases)


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_is_one_line_before_any_data(config_runs, case):
    tmp, results = config_runs
    assert_one_line_error(results[case], *(text.format(tmp=tmp) for text in CONFIG_CASES[case][1]))
    assert "device cpu" not in results[case].stdout  # the Trainer was never built


RUN_DIR_CASES = {  # issue 15 class 15: each was accepted, or a misleading line
    "misspelt key added with +": (["+trainer.epochz=5", "hydra.run.dir={tmp}/added"],
                                  "trainer.epochz=5 is invalid: the trainer has no such key (did you mean "
                                  "trainer.epochs?)"),
    "empty run dir": (["hydra.run.dir=''"], "hydra.run.dir='' is invalid: allowed a folder name (an empty one would "
                                            "write the run into the current directory)"),
    "empty sweep dir": (["-m", "hydra.sweep.dir="], "hydra.sweep.dir='' is invalid: allowed a folder name"),
    "read-only run dir": (["hydra.run.dir=/sys/kernel"], "cannot write the run directory (Permission denied: "
                                                         "/sys/kernel/train.log): set hydra.run.dir=<a writable folder>"),
}


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="a folder nobody may write: Linux's /sys/kernel")
def test_bad_run_directory_and_added_key_are_one_line(tmp_path):
    names = set(os.listdir(REPO))
    results = run_train_py({name: [arg.format(tmp=tmp_path) for arg in args]
                            for name, (args, _) in RUN_DIR_CASES.items()})
    for name, (_, message) in RUN_DIR_CASES.items():
        assert_one_line_error(results[name], message)
    assert set(os.listdir(REPO)) == names  # nothing written into the repository (the current directory)


@pytest.mark.parametrize("override,message", [
    ("trainer.epoch=3", "trainer.epoch is not a key of trainer: did you mean trainer.epochs?"),
    ("trainer.epochs=[", "cannot parse the override 'trainer.epochs=[': no viable alternative at input '['"),
    ("scheduler=nope", "scheduler='nope' is not an option of config group scheduler: allowed constant, cosine,"),
])
def test_hydra_composition_errors_become_one_line(override, message):
    """The errors Hydra raises for train.py's command line (exit_cleanly prints them the same way)."""
    with pytest.raises(HydraException) as refused:
        compose_cfg(override)
    assert one_line(refused.value).startswith(message) and "\n" not in one_line(refused.value)


# --------------------------------------------------------------------------------------- bad checkpoints
CHECKPOINT_CASES = {
    "truncated": ([], ["truncated.pt is not a readable checkpoint (RuntimeError: PytorchStreamReader failed reading "
                       "zip archive: failed finding central directory); resume from another checkpoint "
                       "(checkpoints/last.pt, best.pt, step-N.pt) or start a new run"]),
    "random": ([], ["random.pt is not a readable checkpoint (not the zip archive torch.save writes); resume from"]),
    "old_format": ([], ["old_format.pt has checkpoint format 0, this version reads 2", "start a new run"]),
    "code": ([], ["code.pt needs code to load (posix.system), refused unread", "load only files you trust"]),
    "nan_bit_flip": ([], ["nan_bit_flip.pt fails its checksum", "resume from another checkpoint"]),
    "zeroed_block": ([], ["zeroed_block.pt fails its checksum"]),
    "non_finite": ([], ["non_finite.pt holds non-finite weights (NaN or inf in 'layers.0.0.weight')"]),
    "no_accumulators": ([], ["no_accumulators.pt lacks accumulators; it is incomplete"]),
    "malformed_rng": ([], ["malformed_rng.pt does not fit this run (TypeError: ", "or from another file"]),
    "other_model": (["model=cnn"], ["holds a different model", "resume with the config that wrote it"]),
    "other_optimizer": (["optimizer=adam"], ["was written with optimizer._target_='optimizers.SGD', "
                                             "this run has 'optimizers.Adam'; resume with the config that wrote it"]),
    "missing": ([], ["missing.pt' is invalid: allowed null, auto, or the path of an existing checkpoint file"]),
}
THROUGH_CLI = ("truncated", "other_model", "code", "nan_bit_flip", "zeroed_block")  # all in-process too


class RunsCode:
    """Unpickling this runs ``touch <marker>``: a checkpoint that executes code when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def overwrite_weight_bytes(good, dest, make_bytes):
    """``good`` with the first 16 floats of its first weight replaced on disk by ``make_bytes(64)``: a disk
    error inside the payload, where torch.load does not look."""
    state = torch.load(good, weights_only=True)
    first = next(iter(state["model"].values())).reshape(-1)[:16].numpy().tobytes()
    raw = good.read_bytes()
    at = raw.index(first)
    dest.write_bytes(raw[:at] + make_bytes(len(first)) + raw[at + len(first):])


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    """A real MLP checkpoint (good.pt) and bad ones beside it; each case gets a run directory holding good.pt
    as its last.pt, which a refused resume must leave as it was."""
    tmp = tmp_path_factory.mktemp("checkpoints")
    train(compose_cfg(*BASE), tmp / "good")
    good = tmp / "good" / "checkpoints" / "last.pt"
    (tmp / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp / "random.pt").write_bytes(os.urandom(4096))
    torch.save({**torch.load(good, weights_only=True), "format_version": 0}, tmp / "old_format.pt")
    torch.save({**torch.load(good, weights_only=True), "payload": RunsCode(tmp / "code_ran")}, tmp / "code.pt")
    overwrite_weight_bytes(good, tmp / "nan_bit_flip.pt", lambda n: struct.pack("<f", math.nan) + bytes(n - 4))
    overwrite_weight_bytes(good, tmp / "zeroed_block.pt", bytes)
    state = checkpoint.load(good)
    state["model"]["layers.0.0.weight"][0, 0] = math.inf
    save_with_checksum(state, tmp / "non_finite.pt")  # a diverged model, written whole
    state = checkpoint.load(good)
    del state["accumulators"]
    save_with_checksum(state, tmp / "no_accumulators.pt")
    state = checkpoint.load(good)
    state["rng"]["python"] = [3, [1, 2], None]  # checksummed, loads, and random.setstate cannot take it
    save_with_checksum(state, tmp / "malformed_rng.pt")
    for name in CHECKPOINT_CASES:
        (tmp / name / "checkpoints").mkdir(parents=True)
        (tmp / name / "checkpoints" / "last.pt").write_bytes(good.read_bytes())
    return tmp, {name: good if name.startswith("other") else tmp / f"{name}.pt" for name in CHECKPOINT_CASES}


def save_with_checksum(state, path):
    checkpoint.save(state, path.parent / "scratch")
    (path.parent / "scratch" / "last.pt").rename(path)


@pytest.fixture(scope="module")
def checkpoint_runs(bad_checkpoints):
    tmp, files = bad_checkpoints
    before = {path: path.read_bytes() for path in tmp.rglob("*.pt")}
    cases = {name: [*CHECKPOINT_CASES[name][0], f"data.root={DATA_ROOT}", f"hydra.run.dir={tmp / name}",
                    f"trainer.resume={files[name]}"] for name in THROUGH_CLI}
    return run_train_py(cases), before


def assert_nothing_overwritten(tmp, case, before):
    assert not (tmp / "code_ran").exists()  # the payload never ran
    assert sorted(p.name for p in (tmp / case / "checkpoints").iterdir()) == ["last.pt"]
    for path, content in before.items():
        assert path.read_bytes() == content, path
    checkpoint.load(tmp / case / "checkpoints" / "last.pt")


@pytest.mark.needs_data
@pytest.mark.parametrize("case", THROUGH_CLI)
def test_bad_checkpoint_through_train_py_is_one_line_and_overwrites_nothing(bad_checkpoints, checkpoint_runs, case):
    results, before = checkpoint_runs
    assert_one_line_error(results[case], *CHECKPOINT_CASES[case][1])
    assert_nothing_overwritten(bad_checkpoints[0], case, before)


@pytest.mark.needs_data
@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint_in_process_is_one_line_exit_2(bad_checkpoints, case, capsys):
    tmp, files = bad_checkpoints
    before = {path: path.read_bytes() for path in tmp.rglob("*.pt")}
    with pytest.raises(SystemExit) as stopped, exit_on_user_error():
        validate_and_train(compose_cfg(*BASE, *CHECKPOINT_CASES[case][0], f"trainer.resume={files[case]}"), tmp / case)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert all(text in lines[0] for text in CHECKPOINT_CASES[case][1]), lines[0]
    assert_nothing_overwritten(tmp, case, before)


@pytest.mark.needs_data
def test_init_from_a_file_that_is_no_checkpoint_says_what_to_give_instead(tmp_path):
    """The advice fits the key: a new run from a checkpoint's weights is given another file, not told to resume."""
    results = run_train_py({"text": [f"data.root={DATA_ROOT}", f"hydra.run.dir={tmp_path}",
                                     f"trainer.init_from={REPO / 'README.md'}"]})
    line = assert_one_line_error(results["text"],
                                 "README.md is not a readable checkpoint (not the zip archive torch.save writes)")
    assert line.endswith("; give trainer.init_from=<a run's checkpoints/best.pt or last.pt>") and "resume" not in line


def validate_and_train(cfg, run_dir):
    """What train.py's main does."""
    validate(cfg)
    return train(cfg, run_dir)


@pytest.mark.needs_data
@pytest.mark.parametrize("tool", ["landscape", "hessian", "lr_finder"])
def test_analysis_tools_refuse_a_checkpoint_that_runs_code(bad_checkpoints, tool, tmp_path):
    tmp, files = bad_checkpoints
    result = subprocess.run([sys.executable, "-m", f"analysis.{tool}", f"checkpoint={files['code']}",
                             f"data.root={DATA_ROOT}", f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert_one_line_error(result, "code.pt needs code to load (posix.system), refused unread")
    assert not (tmp / "code_ran").exists()


def test_out_of_memory_in_a_step_is_one_line(capsys):
    with pytest.raises(SystemExit) as stopped, exit_on_user_error():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and line.startswith("error: out of memory (CUDA out of memory. Tried to allocate")
    assert line.endswith("lower data.batch_size (or data.eval_batch_size), or use a smaller model or "
                         "trainer.precision=bf16")
