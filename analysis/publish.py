"""The results ledger: ``python -m analysis.publish run_dir=<run dir> name=<entry>`` copies a finished run into
``results/<name>/`` as small text files a reader can check a published number against:

- ``command.txt``      the command line that started the run (from ``launches.jsonl``, else ``.hydra/overrides.yaml``)
- ``provenance.json``  the git commit(s) of the code, the machine, library versions, the launches (start + resumes)
- ``summary.json``, ``metrics.jsonl``  the run's own, verbatim

The entry is written into a temporary folder and renamed into place: never half-written, never over another entry.
"""
import json
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from omegaconf import DictConfig

from cli.entry import command, run
from cli.provenance import machine, read_launches
from utils.errors import UserError, require
from utils.io import umask

COPIED = ("summary.json", "metrics.jsonl")
SCORES = ("test_acc", "best_val_acc", "final_val_acc")  # what the summary line shows, where the run has it


def provenance(run_dir: Path, commit: str | None) -> dict:
    """Commit(s), machine and launches of ``run_dir``; ``commit`` stands in where the run recorded none."""
    launches = read_launches(run_dir)
    commits = list(dict.fromkeys(launch["commit"] for launch in launches if launch.get("commit")))
    if commit is not None:
        require(not commits or commits == [commit], "commit", commit,
                f"the commit the run recorded ({', '.join(commits)}), or no commit= at all")
        commits = [commit]
    if not commits:
        raise UserError(f"{run_dir} records no git commit (no launches.jsonl: a run from before launches were "
                        f"recorded); give the commit of the code that ran it: commit=<hash>")
    return {"commits": commits, "dirty": any(launch.get("dirty") for launch in launches),
            "machine": launches[0]["machine"] if launches else {**machine(), "recorded": "at publish time"},
            "launches": launches, "source": str(run_dir.resolve()), "published": time.strftime("%Y-%m-%d")}


def run_command(run_dir: Path) -> str:
    """The command line as typed at the first launch, else rebuilt from Hydra's record of the overrides."""
    if launches := read_launches(run_dir):
        return launches[0]["command"]
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    return shlex.join(["python", "train.py", *overrides])


def publish(run_dir: str | Path, name: str, results: str | Path = "results", commit: str | None = None) -> Path:
    """Write the ledger entry ``results/<name>/`` for the finished run in ``run_dir``; returns its folder."""
    run_dir, target = Path(run_dir), Path(results) / name
    missing = [f for f in COPIED if not (run_dir / f).is_file()]
    require(not missing, "run_dir", str(run_dir), f"a run directory holding {' and '.join(COPIED)} "
                                                  f"({', '.join(missing)} missing)")
    summary = json.loads((run_dir / "summary.json").read_text())
    require(summary.get("status", "finished") == "finished" and summary.get("finished", True), "run_dir",
            str(run_dir), "a finished run (its summary.json says it did not finish: resume it first)")
    require(name and "/" not in name and not name.startswith("."), "name", name, "a folder name (no '/')")
    require(not target.exists(), "name", name, f"a name not in {results}/ yet ({target} holds a published run)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        staging.chmod(0o777 & ~umask())  # mkdtemp's 0700 would outlive the rename
        for f in COPIED:
            shutil.copyfile(run_dir / f, staging / f)  # the content; the mode follows the umask, not the run's
        (staging / "command.txt").write_text(run_command(run_dir) + "\n")
        (staging / "provenance.json").write_text(json.dumps(provenance(run_dir, commit), indent=2) + "\n")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@command("publish", validate_config=False)
def main(cfg: DictConfig) -> None:
    target = publish(cfg.run_dir, cfg.name, cfg.results, cfg.commit)
    summary = json.loads((target / "summary.json").read_text())
    scores = ", ".join(f"{key.replace('_', ' ')} {summary[key]:.4f}" for key in SCORES if summary.get(key) is not None)
    print(f"published {target}: {scores or 'no scores'}, {summary.get('epochs')} epochs")


if __name__ == "__main__":
    run(main)
