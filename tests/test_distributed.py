"""DDP and sweeps with real processes: torchrun on the CPU (gloo) against one process on the same global batches,
one run directory, resume; a sweep refused under torchrun and run through launchers instead; the launcher configs."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONFIG_DIR, REPO, TINY, compose_cfg
from cli.compose import build_trainer, train
from fake_cuda import FakeCuda
from data import sources
from training import distributed

TORCHRUN = Path(sys.executable).with_name("torchrun")
# No batch norm, no dropout: the per-rank slices then give exactly the global batch's gradient.
MLP_NET = ("model=mlp", "model.dropout=0.0", "model.batch_norm=false", "optimizer=momentum", "scheduler=cosine",
           "trainer.precision=fp32")
MLP = (*MLP_NET, "trainer.epochs=2", "trainer.keep_last_k=2")
PER_RANK = 32  # per-process batch; the single-process reference uses 2 x this


def launch(prefix: list, *overrides: str, cwd: Path, flags: tuple = (), timeout: int = 300,
           **env) -> subprocess.CompletedProcess:
    """``prefix train.py flags TINY overrides`` in ``cwd``, one thread per process."""
    command = [*map(str, prefix), str(REPO / "train.py"), *flags, *TINY, *overrides]
    return subprocess.run(command, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=timeout)


def torchrun(*overrides: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    done = launch([TORCHRUN, "--standalone", "--nproc_per_node=2"], *overrides, cwd=cwd, **kw)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def found(root: Path, pattern: str) -> list[Path]:
    return sorted(root.rglob(pattern))


def model_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = model_state(a), model_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


def epochs(run_dir: Path) -> list[dict]:
    """The per-epoch records of metrics.jsonl (the last line holds the test scores)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "train_loss" in r]


# ------------------------------------------------------------------------ torchrun = one process, bigger batch
def checkpoint_at(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:09d}.pt"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """A 2-rank run of 2 epochs (8 steps each) in Hydra's default timestamped run dir, then rewound to its
    epoch-1 checkpoint, as a run stopped there would have left it, and resumed in place; and one process,
    2 epochs, twice the batch size."""
    root = tmp_path_factory.mktemp("ddp")
    started = time.perf_counter()
    torchrun(*MLP, f"data.batch_size={PER_RANK}", cwd=root)
    files = {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    (run_dir,) = [p.parent for p in found(root, ".hydra")]
    last = run_dir / "checkpoints" / "last.pt"
    shutil.copy(last, root.parent / "straight.pt")
    shutil.copy(checkpoint_at(run_dir, 8), last)
    torchrun(*MLP, f"data.batch_size={PER_RANK}", "trainer.resume=auto", f"hydra.run.dir={run_dir}", cwd=root)
    print(f"two torchrun launches: {time.perf_counter() - started:.1f}s")
    single = root.parent / "single"
    train(compose_cfg(*MLP, f"data.batch_size={2 * PER_RANK}"), single)
    return dict(root=root, run_dir=run_dir, files=files, straight=root.parent / "straight.pt", single=single)


@pytest.mark.needs_data
def test_ddp_writes_one_run_directory_from_rank_0(ddp):
    root, run_dir, files = ddp["root"], ddp["run_dir"], ddp["files"]
    rel = run_dir.relative_to(root)
    assert rel.parts[0] == "outputs" and len(rel.parts) == 3  # outputs/<date>/<time>: Hydra's own run dir
    assert all(p.parts[:3] == rel.parts for p in files), sorted(files)  # nothing outside it (rank 1 wrote none)
    assert len([p for p in files if p.name.startswith("events.out.tfevents")]) == 1
    assert len([p for p in files if p.name == "last.pt"]) == 1
    assert len([p for p in files if p.name == "train.log"]) == 1
    assert {"config.yaml", "overrides.yaml", "hydra.yaml"} <= {p.name for p in files if ".hydra" in p.parts}
    log = (run_dir / "train.log").read_text()
    assert f"2 process(es); global batch {2 * PER_RANK}, base lr 0.1" in log
    assert log.count("epoch 1: train_loss") == 1  # rank 1 logs no INFO lines, and to no file


@pytest.mark.needs_data
def test_ddp_equals_one_process_on_the_global_batch(ddp):
    for step in (8, 16):
        assert_same_weights(checkpoint_at(ddp["run_dir"], step), checkpoint_at(ddp["single"], step))
    for ours, ref in zip(epochs(ddp["run_dir"]), epochs(ddp["single"]), strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):  # reduced over ranks = the whole set's
            assert ours[key] == pytest.approx(ref[key], rel=1e-5), key


@pytest.mark.needs_data
def test_ddp_resume_continues_the_run(ddp):
    run_dir = ddp["run_dir"]
    assert_same_weights(run_dir / "checkpoints" / "last.pt", ddp["straight"])
    assert [e["epoch"] for e in epochs(run_dir)] == [1, 2]  # epoch 2 rewritten, not duplicated
    assert len(found(ddp["root"], ".hydra")) == 1 and len(found(ddp["root"], "last.pt")) == 1
    assert len(found(run_dir / "tb", "events.out.tfevents.*")) == 2  # one per (re)start
    assert "resumed from" in (run_dir / "train.log").read_text()


# ----------------------------------------------------------------------------- the Hydra side of torchrun
def test_hydra_argv_changes_nothing_outside_torchrun():
    argv = ["train.py", "-m", "optimizer.lr=0.1,0.2"]
    assert distributed.hydra_argv(argv, environ={"WORLD_SIZE": "2", "RANK": "1"}) == argv


def test_hydra_argv_leaves_rank_0_alone_and_silences_the_others():
    argv = ["train.py", "hydra.run.dir=runs/a"]
    torchrun_env = {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2"}
    assert distributed.hydra_argv(argv, environ={**torchrun_env, "RANK": "0"}) == argv
    others = distributed.hydra_argv(argv, environ={**torchrun_env, "RANK": "1"})
    assert others[:2] == argv  # the user's hydra.run.dir is overridden: rank 1 learns rank 0's later
    assert others[2:] == ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none"]


@pytest.mark.parametrize("flag", ["-m", "--multirun", "hydra.mode=MULTIRUN"])
def test_hydra_argv_refuses_a_sweep_under_torchrun(flag):
    with pytest.raises(distributed.LaunchError, match="torchrun cannot run a Hydra sweep"):
        distributed.hydra_argv(["train.py", flag, "optimizer.lr=0.1,0.2"], environ={"TORCHELASTIC_RUN_ID": "x"})


def test_train_py_refuses_a_sweep_under_torchrun_in_one_line(tmp_path):
    done = launch([sys.executable], "optimizer.lr=0.1,0.2", cwd=tmp_path, flags=("-m",), timeout=120,
                  TORCHELASTIC_RUN_ID="test", RANK="0", WORLD_SIZE="2")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: torchrun cannot run a Hydra sweep (-m)")
    assert list(tmp_path.iterdir()) == []  # refused before Hydra made a directory


@pytest.mark.needs_data
def test_a_failed_sanity_check_under_torchrun_is_said_once_by_rank_0_and_stops_every_rank(tmp_path):
    """Each rank checks its own copies on its own data; they agree on the verdict, rank 0 names the failed ranks."""
    done = launch([TORCHRUN, "--standalone", "--nproc_per_node=2"], *MLP_NET, "trainer.sanity=run",
                  "sanity.checks=[overfit]", "sanity.overfit_steps=5", "optimizer.lr=0", f"data.batch_size={PER_RANK}",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("error: sanity check failed on ranks 0, 1 (rank 0: overfit: training accuracy ")
    assert "the learning rate is 0" in errors[0] and errors[0].endswith("(trainer.sanity=warn to train anyway)")
    assert not (tmp_path / "run" / "checkpoints").exists()  # no rank trained


def test_other_ranks_log_warnings_only_and_to_no_file(tmp_path):
    """A submitit job's tasks all get Hydra's handler on the one train.log: ranks other than 0 drop it."""
    root = logging.getLogger()
    handler, level = logging.FileHandler(tmp_path / "train.log"), root.level
    root.addHandler(handler)
    try:
        distributed.quiet_other_ranks(distributed.DistEnv(rank=0, world_size=2))
        assert handler in root.handlers
        distributed.quiet_other_ranks(distributed.DistEnv(rank=1, world_size=2))
        assert handler not in root.handlers and root.level == logging.WARNING
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)


def test_sync_bn_needs_cuda_and_is_a_no_op_in_one_process(cfg):
    model = instantiate(cfg("model=cnn", "model.sync_bn=true").model)
    assert distributed.wrap_model(model, distributed.DistEnv(), torch.device("cpu")) is model
    with pytest.raises(ValueError, match=r"model.sync_bn=true needs CUDA.*set model.sync_bn=false"):
        distributed.wrap_model(model, distributed.DistEnv(rank=0, world_size=2), torch.device("cpu"))


# --------------------------------------------------------------------------------------- launcher configs
def launcher_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True).hydra.launcher


def test_parallel_launcher_is_joblib_with_n_jobs():
    launcher = launcher_cfg("hydra/launcher=parallel", "hydra.launcher.n_jobs=3")
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 3 and launcher.prefer == "processes"
    assert type(instantiate(launcher)).__name__ == "JoblibLauncher"


def test_slurm_launcher_composes_and_submitit_accepts_it(tmp_path, monkeypatch):
    cfg = launcher_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4")
    assert cfg._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    params = instantiate(cfg).params
    assert params["tasks_per_node"] == 4  # one DDP rank per GPU
    assert {k: params[k] for k in ("partition", "nodes", "timeout_min", "cpus_per_task", "mem_gb",
                                   "array_parallelism", "max_num_timeout")} == {
        "partition": "gpu", "nodes": 1, "timeout_min": 240, "cpus_per_task": 8, "mem_gb": 32,
        "array_parallelism": 16, "max_num_timeout": 0}
    sbatch = sbatch_header(params, tmp_path, monkeypatch)
    for option in ("partition=gpu", "gpus-per-node=4", "ntasks-per-node=4", "time=240", "cpus-per-task=8", "mem=32GB"):
        assert f"#SBATCH --{option}\n" in sbatch


def sbatch_header(params: dict, tmp_path: Path, monkeypatch) -> str:
    """The sbatch script submitit would submit for ``params``, mapped as BaseSubmititLauncher.launch maps them
    (submitit rejects unknown keys); a stub ``srun`` stands in for the cluster."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "jobs")
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    return executor._executor._make_submission_file_text("python train.py", "uid")


# ------------------------------------------------------------------------------------------ slow: real sweeps
SWEEP = (*MLP_NET, f"data.batch_size={PER_RANK}")


@pytest.mark.slow
@pytest.mark.needs_data
def test_parallel_sweep_runs_single_process_jobs_side_by_side(tmp_path):
    done = launch([sys.executable], *SWEEP, "hydra/launcher=parallel", f"hydra.sweep.dir={tmp_path}",
                  "optimizer.lr=0.05,0.1", cwd=tmp_path, flags=("-m",))
    assert done.returncode == 0, done.stderr[-3000:]
    job_dirs = [p.parent for p in found(tmp_path, "summary.json")]
    assert len(job_dirs) == 2
    pids = {e.name.split(".")[-2] for e in found(tmp_path, "events.out.tfevents.*")}
    assert len(pids) == 2  # two worker processes
    assert all("1 process(es)" in (d / "train.log").read_text() for d in job_dirs)


@pytest.mark.slow
@pytest.mark.needs_data
def test_submitit_sweep_job_is_one_ddp_run_with_one_directory(tmp_path):
    """Each sweep job is a 2-task submitit job (the local executor stands in for SLURM): its tasks are the ranks."""
    done = launch([sys.executable], *SWEEP, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", "optimizer.lr=0.05,0.1", cwd=REPO, flags=("-m",),
                  timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    job_dirs = sorted(p.parent for p in found(tmp_path / "sweep", "summary.json"))
    assert len(job_dirs) == 2 and all(len(found(d / "tb", "events.*")) == 1 for d in job_dirs)
    for d in job_dirs:
        log = (d / "train.log").read_text()
        assert f"2 process(es); global batch {2 * PER_RANK}" in log and log.count("epoch 1: train_loss") == 1
    reference = tmp_path / "single"
    train(compose_cfg(*SWEEP, f"data.batch_size={2 * PER_RANK}", "optimizer.lr=0.1"), reference)
    (lr_01,) = [d for d in job_dirs if "optimizer.lr=0.1" in d.name]
    assert_same_weights(lr_01 / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")


@pytest.mark.slow
@pytest.mark.needs_data
def test_ddp_cnn_reaches_the_single_process_accuracy(tmp_path):
    """BatchNorm sees 32 examples per rank instead of 64, so DDP is close to, not equal to, one process. The
    reported val metrics are those of the checkpoint (rank 0's BatchNorm statistics, on every rank)."""
    cnn = ("model=cnn", "trainer.precision=fp32", "data.train_subset=4096", "data.val_subset=1000",
           "trainer.epochs=2")
    torchrun(*cnn, f"data.batch_size={PER_RANK}", f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path)
    reported = epochs(tmp_path / "ddp")[-1]
    single_acc = train(compose_cfg(*cnn, f"data.batch_size={2 * PER_RANK}"), tmp_path / "single")["final_val_acc"]
    print(f"final val acc: ddp {reported['val_acc']:.4f}, single {single_acc:.4f}")
    assert single_acc > 0.9 and abs(reported["val_acc"] - single_acc) <= 0.02
    evaluator = build_trainer(compose_cfg(*cnn), tmp_path / "eval")
    evaluator.resume(tmp_path / "ddp" / "checkpoints" / "last.pt")
    scores = evaluator.evaluate()
    assert scores["loss"] == pytest.approx(reported["val_loss"], rel=1e-5) and scores["acc"] == reported["val_acc"]


def worker_pid(agent_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker process of ``rank`` (a direct child of the agent)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"PPid:\t{agent_pid}\n" in (proc / "status").read_text() and \
                    f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue
    return None


@pytest.mark.slow
@pytest.mark.needs_data
def test_sigterm_to_one_rank_stops_all_ranks_after_one_step_with_a_checkpoint(tmp_path):
    """Only rank 1 gets SIGTERM; the ranks agree at a logging interval, rank 0 saves, every rank exits."""
    run_dir = tmp_path / "run"
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", REPO / "train.py", *TINY, *MLP,
               "data.train_subset=null", "data.batch_size=8", "logger.log_every_n_steps=10",
               f"hydra.run.dir={run_dir}"]
    agent = subprocess.Popen(list(map(str, command)), cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "tb").is_dir() and agent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # into the epoch (3750 steps)
    os.kill(worker_pid(agent.pid, rank=1), signal.SIGTERM)
    _, stderr = agent.communicate(timeout=240)
    assert agent.returncode != 0, stderr[-2000:]
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and 0 < state["global_step"] < 3750 and state["global_step"] % 10 == 0
    assert f"stopped by SIGTERM at step {state['global_step']}" in (run_dir / "train.log").read_text()


# ------------------------------------------------------------------ device binding, with torch.cuda mocked
def torchrun_env(monkeypatch, rank: int, world_size: int, local_rank: int) -> None:
    for key, value in {"RANK": rank, "WORLD_SIZE": world_size, "LOCAL_RANK": local_rank}.items():
        monkeypatch.setenv(key, str(value))


def test_torchrun_binds_cuda_local_rank_before_nccl_starts(monkeypatch):
    gpus = FakeCuda(monkeypatch, [(9, 0)] * 8)
    torchrun_env(monkeypatch, rank=11, world_size=16, local_rank=3)  # node 2, its 4th process
    env, device = distributed.setup("cuda")
    assert env == distributed.DistEnv(rank=11, world_size=16, local_rank=3) and device == torch.device("cuda", 3)
    assert gpus.calls == [("set_device", torch.device("cuda", 3)),
                          ("init_process_group", {"backend": "nccl", "device_id": torch.device("cuda", 3)})]


def test_a_task_shown_only_its_own_gpu_takes_cuda_0(monkeypatch):
    FakeCuda(monkeypatch, [(8, 0)])
    torchrun_env(monkeypatch, rank=5, world_size=8, local_rank=5)
    assert distributed.setup("auto")[1] == torch.device("cuda", 0)


@pytest.mark.parametrize("device,message", [
    ("cuda:1", r"trainer.device=cuda:1 under torchrun: each process takes cuda:<LOCAL_RANK>; set trainer.device=cuda"),
    ("cuda", r"LOCAL_RANK=4 but this process sees 2 GPU\(s\): start at most 2 processes per node"),
])
def test_torchrun_refuses_a_device_it_cannot_bind(monkeypatch, device, message):
    gpus = FakeCuda(monkeypatch, [(8, 0)] * 2)
    torchrun_env(monkeypatch, rank=4, world_size=8, local_rank=4)
    with pytest.raises(distributed.LaunchError, match=message):
        distributed.setup(device)
    assert gpus.calls == []  # refused before any process group


def test_one_process_honours_cuda_n(monkeypatch):
    gpus = FakeCuda(monkeypatch, [(8, 0)] * 4)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    env, device = distributed.setup("cuda:2")
    assert not env.enabled and device == torch.device("cuda", 2)
    assert gpus.calls == [("set_device", torch.device("cuda", 2))] and torch.cuda.current_device() == 2
    assert distributed.setup("cuda")[1] == torch.device("cuda", 0)


@pytest.mark.parametrize("overrides,message", [
    (("trainer.on_nan=skip",), r"trainer.on_nan=skip under torchrun \(2 processes\): each process would decide"),
    (("optimizer=lbfgs",), r"a closure optimizer \(L-BFGS\) under torchrun \(2 processes\): its line search"),
    (("optimizer=lbfgs", "trainer.closure=full_batch"), r"a closure optimizer \(L-BFGS\) under torchrun"),
])
def test_ddp_refuses_what_would_make_the_processes_disagree(cfg, tmp_path, monkeypatch, overrides, message):
    """Refused in one line before any data is loaded or any collective runs (gloo's group is mocked)."""
    torchrun_env(monkeypatch, rank=0, world_size=2, local_rank=0)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: None)
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, env: obj)
    monkeypatch.setitem(sources.SOURCES, "mnist", lambda *a, **kw: pytest.fail("data loaded before the refusal"))
    with pytest.raises(distributed.LaunchError, match=message):
        build_trainer(cfg(*overrides), tmp_path)
