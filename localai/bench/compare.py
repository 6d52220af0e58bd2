"""`localai bench compare A.json B.json`: what changed between two reports, and what is beyond noise."""

from __future__ import annotations

from localai.bench.report import SCHEMA
from localai.errors import LocalaiError, UsageError

REGRESSION_EXIT = 3  # `bench compare` exit code when B is worse than A on some metric (1 and 2 are errors)
# metric -> True when higher is better
WATCHED = {
    "request_throughput": True, "output_throughput": True, "total_token_throughput": True,
    "prefill_throughput": True, "decode_throughput": True,
    "mean_ttft_ms": False, "p99_ttft_ms": False, "mean_tpot_ms": False, "p99_tpot_ms": False,
    "mean_itl_ms": False, "p99_itl_ms": False, "mean_e2el_ms": False, "p99_e2el_ms": False,
    "peak_memory_mb": False,
}


def parse_threshold(text: str) -> float:
    """A percentage: '5%' or '5' -> 0.05. A bare number below 1 ('0.05') is refused: it reads as a
    fraction but would mean 0.05%."""
    stripped = text.strip()
    raw = stripped[:-1] if stripped.endswith("%") else stripped
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"--threshold {text!r} is not a number", "write it like 5%") from None
    if not 0 <= value <= 1000:
        raise UsageError(f"--threshold {text!r} is out of range", "write a percentage like 5%")
    if not stripped.endswith("%") and 0 < value < 1:
        raise UsageError(f"--threshold {text!r} is ambiguous (a fraction, or {value}%?)", "write it with %, e.g. 5%")
    return value / 100


def compare(a: dict, b: dict, threshold: float) -> dict:
    """Per run present in both reports and per watched metric: A, B, change, and a verdict."""
    runs_b = {run["name"]: run for run in b["runs"]}
    common = [run for run in a["runs"] if run["name"] in runs_b]
    if not common:
        names_a = ", ".join(r["name"] for r in a["runs"])
        names_b = ", ".join(r["name"] for r in b["runs"])
        raise LocalaiError(f"the reports share no run (A has {names_a}; B has {names_b})",
                           "compare reports made with the same --dp/--tp options")
    rows = []
    for run_a in common:
        run_b = runs_b[run_a["name"]]
        for metric, higher_is_better in WATCHED.items():
            rows.append(_row(run_a, run_b, metric, higher_is_better, threshold))
    rows = [row for row in rows if row is not None]
    different = differences(a, b)
    older = {label: report["schema"] for label, report in (("A", a), ("B", b)) if report["schema"] != SCHEMA}
    return {"a": a["environment"].get("command"), "b": b["environment"].get("command"), "threshold": threshold,
            "workload_differs": "workload" in different, "differences": different, "older_schema": older,
            "rows": rows, "flagged": sum(row["verdict"] != "same" for row in rows),
            "regressions": sum(row["verdict"] == "worse" for row in rows)}


def differences(a: dict, b: dict) -> list[str]:
    """What makes the two reports not like for like: workload, model, device, an interrupted run."""
    found = []
    if a["workload"] != b["workload"]:
        found.append("workload")
    model_a, model_b = a.get("model", {}), b.get("model", {})
    if (model_a.get("name"), model_a.get("quantization")) != (model_b.get("name"), model_b.get("quantization")):
        found.append("model")
    env_a, env_b = a.get("environment", {}), b.get("environment", {})
    if any(env_a.get(key) != env_b.get(key) for key in ("device", "gpus", "cpu", "usable_cores")):
        found.append("device")
    if a.get("interrupted") or b.get("interrupted"):
        found.append("an interrupted run")
    return found


def _row(run_a: dict, run_b: dict, metric: str, higher_is_better: bool, threshold: float) -> dict | None:
    value_a, value_b = run_a["metrics"].get(metric), run_b["metrics"].get(metric)
    if value_a is None or value_b is None:
        return None
    if value_a:
        change = (value_b - value_a) / value_a
        moved = abs(change) > threshold
    else:  # from zero: no ratio (change None), but any change at all is flagged
        change = None if value_b else 0.0
        moved = bool(value_b)
    verdict = "same"
    if moved:
        verdict = "better" if (value_b > value_a) == higher_is_better else "worse"
    return {"run": run_a["name"], "metric": metric, "a": value_a, "b": value_b, "change": change, "verdict": verdict}


def render_comparison(result: dict) -> str:
    lines = [f"note: {label} is an older report ({schema}, with one scaling entry, read as a list of one); "
             "its runs compare as usual" for label, schema in result["older_schema"].items()]
    if result["differences"]:
        lines.append(f"note: the two reports differ in {', '.join(result['differences'])}: not a like-for-like comparison")
    header = ("run", "metric", "A", "B", "change", "")
    body = [(r["run"], r["metric"], f"{r['a']:.2f}", f"{r['b']:.2f}", "from 0" if r["change"] is None else f"{r['change'] * 100:+.1f}%",
             "" if r["verdict"] == "same" else r["verdict"].upper()) for r in result["rows"]]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    for row in [header, *body]:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    lines.append(f"{result['flagged']} change(s) beyond ±{result['threshold'] * 100:g}%, "
                 f"{result['regressions']} of them worse")
    return "\n".join(lines) + "\n"
