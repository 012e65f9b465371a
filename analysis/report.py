"""One self-contained HTML page for a run or a sweep: ``python -m analysis.report dir=<run or sweep dir>``.

Writes ``<dir>/report.html``: what was run (for a sweep, the settings in which its groups differ, as a table), the
results (per group n and mean +- std of best val accuracy, test accuracy and training time; for one run, its
summary), every figure (``analysis.compare``'s for a sweep, the run's curves for one run, and a
``gradient_flow.png`` where one was drawn) embedded as base64 ``data:`` URIs, and the TensorBoard command for the
event files. It opens from disk in any browser: no server, no network, nothing it links to needs to exist.
"""
import base64
import html
import io
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from analysis.compare import comparison_rows, compare
from analysis.figures import plt
from analysis.runs import group_runs, read_run, read_runs
from cli.entry import command, run
from utils.errors import require

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}code{background:#f6f6f6;padding:1px 4px}
figure{margin:1em 0}figcaption{color:#555;font-size:13px}"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_html(png: bytes, caption: str) -> str:
    return (f'<figure><img src="{data_uri(png)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table_html(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def mean_std(row: dict, name: str, scale: float = 100, digits: int = 2) -> str:
    mean, std = row[f"{name}_mean"] * scale, row[f"{name}_std"] * scale
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if np.isfinite(std) else f"{mean:.{digits}f}"


def is_sweep(directory: Path) -> bool:
    return any((d / ".hydra" / "overrides.yaml").is_file() for d in directory.iterdir() if d.is_dir())


def sweep_sections(directory: Path) -> list[str]:
    """What ran (varied settings per group), the results table, and compare's figures."""
    groups = group_runs(read_runs(directory))
    rows = comparison_rows(groups)
    out = compare(directory, directory / "compare")
    settings = sorted({key for g in groups for key in dict(o.split("=", 1) for o in g.varied)})
    varied = [dict(o.split("=", 1) for o in g.varied) for g in groups]
    shared = sorted(set.intersection(*(set(g.setting) for g in groups)))
    sections = [f"<h2>What was run</h2><p>{sum(g.n for g in groups)} runs in {len(groups)} settings; every run "
                f"also had: <code>{html.escape(' '.join(shared) or '(nothing else)')}</code></p>",
                table_html([*settings, "n", "seeds"], [[v.get(k, "") for k in settings] + [r["n"], r["seeds"]]
                                                      for v, r in zip(varied, rows)]),
                "<h2>Results</h2><p>Mean ± sample standard deviation over seeds. Best val accuracy: the best "
                "evaluation on the held-out training images; test accuracy: best.pt's weights on the test set, "
                "scored once at the end.</p>",
                table_html(["setting", "n", "best val acc %", "test acc %", "training time s"],
                           [[g.label, r["n"], mean_std(r, "best_val_acc"), mean_std(r, "test_acc"),
                             mean_std(r, "train_time", 1, 1)] for g, r in zip(groups, rows)]),
                "<h2>Figures</h2>"]
    sections += [figure_html(path.read_bytes(), path.stem.replace("_", " ")) for path in out.paths
                 if path.suffix == ".png"]
    return sections


def run_curves(run) -> bytes:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(*run.curve("train_loss"), "o-", label="training loss")
    left.set(xlabel="epoch", yscale="log", title="training loss")
    for key in ("train_acc", "val_acc"):
        right.plot(*run.curve(key), "o-", label=key)
    right.set(xlabel="epoch", title="accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def run_sections(directory: Path) -> list[str]:
    run = read_run(directory)
    summary = run.summary or {}
    return ["<h2>What was run</h2>", table_html(["override"], [[o] for o in run.overrides] or [["(defaults)"]]),
            "<h2>Results</h2>", table_html(["key", "value"], [[k, v] for k, v in summary.items()]),
            "<h2>Figures</h2>", figure_html(run_curves(run), "training loss and accuracy per epoch")]


def report(directory: str | Path) -> Path:
    """Write ``<directory>/report.html`` and return its path."""
    directory = Path(directory)
    require(directory.is_dir() and ((directory / "metrics.jsonl").is_file() or is_sweep(directory)), "dir",
            str(directory), "a run directory (with metrics.jsonl) or a sweep directory (train.py -m)")
    sweep = not (directory / "metrics.jsonl").is_file()
    sections = sweep_sections(directory) if sweep else run_sections(directory)
    flow = directory / "gradient_flow.png"
    if flow.is_file():
        sections.append(figure_html(flow.read_bytes(), "per-layer gradient norms (gradient flow)"))
    sections.append(f"<h2>TensorBoard</h2><p>Event files under this directory: "
                    f"<code>tensorboard --logdir {html.escape(str(directory))}</code></p>")
    title = f"optlab {'sweep' if sweep else 'run'} {directory}"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>")
    path = directory / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


@command("report", validate_config=False)
def main(cfg: DictConfig) -> None:
    print(f"wrote {report(cfg.dir)}")


if __name__ == "__main__":
    run(main)
