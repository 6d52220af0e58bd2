"""Bench reports: the JSON document, and the same rows as a table, Markdown, CSV or JSON lines."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from localai.bench.metrics import UNITS
from localai.errors import LocalaiError
from localai.host import usable_cores

SCHEMA = "localai.bench/2"  # /2: "scaling" is a list, one entry per parallel run (/1: one entry, a dict)
OLDER_SCHEMA = "localai.bench/1"
FORMATS = ("table", "json", "jsonl", "md", "csv")
# (column title, metric key, format) shown in table / md / csv
COLUMNS = [
    ("req/s", "request_throughput", "{:.2f}"),
    ("out tok/s", "output_throughput", "{:.1f}"),
    ("total tok/s", "total_token_throughput", "{:.1f}"),
    ("prefill tok/s", "prefill_throughput", "{:.1f}"),
    ("decode tok/s", "decode_throughput", "{:.1f}"),
    ("TTFT ms", "mean_ttft_ms", "{:.1f}"),
    ("TTFT p99", "p99_ttft_ms", "{:.1f}"),
    ("TPOT ms", "mean_tpot_ms", "{:.2f}"),
    ("ITL p99", "p99_itl_ms", "{:.2f}"),
    ("E2EL ms", "mean_e2el_ms", "{:.1f}"),
    ("peak MB", "peak_memory_mb", "{:.0f}"),
]


def _git_commit() -> str | None:
    """The commit of the checkout localai runs from; None for an installed copy, whose folder may sit
    inside another repository (a virtual environment in a project's clone)."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():  # a folder in a clone, a file in a worktree
        return None
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True,
                              timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _version(package: str) -> str | None:
    """An installed package's version, read from its metadata (importing bitsandbytes would log noise)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    """Where the figures come from: hardware, drivers, library versions, the command line."""
    import torch

    import localai

    env = {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "usable_cores": len(usable_cores()), "device": device,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": _version("transformers"), "bitsandbytes": _version("bitsandbytes"),
        "localai": localai.__version__, "git_commit": _git_commit(),
        "command": shlex.join(["localai", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["driver"] = _nvidia_driver()
    return env


def _nvidia_driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout else None


def build_report(env: dict, model: dict, workload: dict, settings: dict, result: dict) -> dict:
    return {"schema": SCHEMA, "environment": env, "model": model, "workload": workload, "settings": settings,
            **result, "units": UNITS}


def rows(report: dict) -> list[dict]:
    """Flat rows: each run (with its scaling figures, if any), then its replicas (DP) or ranks (TP) as `name/i`."""
    scaled = {entry["run"]: {"scaling_baseline": entry["baseline"], "scaling_speedup": entry["speedup"],
                             "scaling_efficiency": entry["efficiency"]} for entry in report.get("scaling", [])}
    out = []
    for run in report["runs"]:
        sd = {f"sd_{key}": value for key, value in run["metrics_sd"].items()} if len(run["repeats"]) > 1 else {}
        out.append({"run": run["name"], "placement": ", ".join(run["placements"]), **run["metrics"], **sd,
                    **scaled.get(run["name"], {})})
        if len(run["replicas"]) > 1:
            for replica in run["replicas"]:
                out.append({"run": f"  {run['name']}/{replica['replica']}", "placement": replica["placement"],
                            **{k: v for k, v in replica.items() if k not in ("replica", "placement")}})
    return out


def _cell(row: dict, key: str, fmt: str) -> str:
    """The value; throughputs as `mean ± sd` where a run was repeated (llama-bench style)."""
    value, sd = row.get(key), row.get(f"sd_{key}")
    if value is None:
        return "-"
    spread = sd is not None and key in ("request_throughput", "output_throughput", "total_token_throughput")
    return fmt.format(value) + (f" ± {fmt.format(sd)}" if spread else "")


def _grid(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["run", "placement"] + [title for title, _, _ in COLUMNS]
    body = [[row["run"], row["placement"]] + [_cell(row, key, fmt) for _, key, fmt in COLUMNS]
            for row in rows(report)]
    return header, body


def _footer(report: dict) -> list[str]:
    lines = []
    work = report["workload"]
    lines.append(f"{work['num_requests']} requests, input {work['input_len']} / output {work['output_len']} tokens, "
                 f"seed {work['seed']}, {report['settings']['repeats']} repeat(s); "
                 "out = output tokens, total = input + output tokens")
    for s in report.get("scaling", []):
        lines.append(f"scaling: {s['run']} is {s['speedup']:.2f}x {s['baseline']} "
                     f"({s['efficiency'] * 100:.0f}% of {s['processes']}x)")
    if "comparison" in report:
        c = report["comparison"]
        lines.append(f"{c['dp']} vs {c['tp']}: {c['dp_over_tp']:.2f}x total tok/s; {c['interconnect']}; "
                     f"greedy outputs {'match' if c['greedy_outputs_match'] else 'differ'}")
    return lines


def render_table(report: dict) -> str:
    header, body = _grid(report)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), *map(line, body), *_footer(report)]) + "\n"


def render_md(report: dict) -> str:
    header, body = _grid(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines + [""] + _footer(report)) + "\n"


# metrics the CSV carries beyond the table's columns
CSV_EXTRA = ["median_ttft_ms", "p90_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "p99_e2el_ms",
             "duration_s"]
SCALING_COLUMNS = ["scaling_baseline", "scaling_speedup", "scaling_efficiency"]


def render_csv(report: dict) -> str:
    """The rows with every column, then `sd_<metric>` for each (empty unless the run was repeated), then
    the scaling baseline, speed-up and efficiency of each parallel run measured against one."""
    metrics = list(dict.fromkeys([key for _, key, _ in COLUMNS] + CSV_EXTRA))
    keys = ["run", "placement"] + metrics + [f"sd_{key}" for key in metrics] + SCALING_COLUMNS
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows(report):
        writer.writerow({**row, "run": row["run"].strip()})
    return buffer.getvalue()


def render_jsonl(report: dict) -> str:
    """One self-contained line per run (llama-bench style): environment, workload, metrics; then one line
    per scaling entry and one for the DP/TP comparison when the report has them. `kind` tells the lines
    apart: "run" lines hold `run`, "scaling" lines `scaling` (one entry), "comparison" lines `comparison`."""
    shared = {k: report[k] for k in ("schema", "environment", "model", "workload", "settings")}
    lines = [{**shared, "kind": "run", "run": run} for run in report["runs"]]
    lines += [{**shared, "kind": "scaling", "scaling": entry} for entry in report.get("scaling", [])]
    if "comparison" in report:
        lines.append({**shared, "kind": "comparison", "comparison": report["comparison"]})
    return "".join(json.dumps(line) + "\n" for line in lines)


def render(report: dict, fmt: str) -> str:
    if fmt not in FORMATS:
        raise LocalaiError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    return {"table": render_table, "md": render_md, "csv": render_csv, "jsonl": render_jsonl}[fmt](report)


def load_report(path: Path) -> dict:
    """A bench report written with --format json, checked for the fields `compare` needs. An older
    report (OLDER_SCHEMA) is read with its one scaling entry as a list of one; its "schema" still
    says what the file is."""
    path = Path(path)
    if not path.is_file():
        raise LocalaiError(f"report {path} not found", "pass a file written by `localai bench --format json`")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LocalaiError(f"{path} is not JSON ({exc})", "pass a file written by `localai bench --format json`") from None
    if not _has_report_shape(report):
        raise LocalaiError(f"{path} is not a localai bench report", "pass a file written by `localai bench --format json`")
    if report["schema"] == OLDER_SCHEMA and "scaling" in report:
        report["scaling"] = [report["scaling"]]
    return report


def _has_report_shape(report) -> bool:
    """The fields `compare` reads, with their types: a hand-edited file fails here, in one line."""
    if not isinstance(report, dict) or report.get("schema") not in (SCHEMA, OLDER_SCHEMA):
        return False
    if not all(isinstance(report.get(key), dict) for key in ("environment", "workload")):
        return False
    if not isinstance(report.get("model", {}), dict):
        return False
    runs = report.get("runs")
    if not isinstance(runs, list):
        return False
    for run in runs:
        if not (isinstance(run, dict) and isinstance(run.get("name"), str) and isinstance(run.get("metrics"), dict)):
            return False
        numbers = run["metrics"].values()
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in numbers):
            return False
    return True
