"""The quantization quality table: perplexity of fp32, bitsandbytes NF4, int4 round-to-nearest,
TurboQuant data-free and TurboQuant calibrated, all in one run.

Every checkpoint is made with `localai quantize`; then one `localai eval ... --speed` run
scores them all (WikiText-2 protocol: first 400,000 characters, 40 windows of 512 tokens)
and times greedy decoding at batch 1 for each, side by side in one process.
The calibrated row uses the default calibration (text sampled from the model itself);
--wiki-calib adds a row calibrated on wiki.test.raw from character 600,000 on, outside
the evaluation windows. A table goes to stderr, JSON to stdout.

    python scripts/bench_quality.py --model smollm2-135m --threads 2 [--wiki-calib]

Acceptance: calibrated <= 30.0 and below NF4; data-free below int4; TurboQuant decoding
at least as fast as NF4 and at least half as fast as fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WIKI_CALIB_FROM = 600_000


def localai(*args: str, threads: int) -> dict:
    """Run one `localai ... --json` command in a fresh process; its JSON result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), LOCALAI_DEBUG="1")
    command = [sys.executable, "-m", "localai", "--device", "cpu", *args, "--json"]
    print("$ localai " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"command failed with exit code {done.returncode}: localai {' '.join(args)}")
    return json.loads(done.stdout)


def wiki_calibration_file(folder: Path) -> Path:
    from localai.evaluate import default_text_path

    source = default_text_path()
    if source is None:
        sys.exit("--wiki-calib needs wiki.test.raw beside the project")
    with open(source, encoding="utf-8", newline="") as handle:
        text = handle.read()[WIKI_CALIB_FROM:]
    path = folder / "wiki-calib.txt"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="fp32 model: alias or folder")
    parser.add_argument("--work", type=Path, help="folder for the quantized checkpoints (default: a temp folder)")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--wiki-calib", action="store_true", help="add a row calibrated on wiki.test.raw[600000:]")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = [("fp32", None), ("bitsandbytes NF4", ["--method", "nf4"]), ("int4 RTN g64", ["--method", "int4"]),
            ("TurboQuant data-free", ["--no-calib"]), ("TurboQuant calibrated", [])]
    if args.wiki_calib:
        rows.append(("TurboQuant calibrated (wiki 600k+)", ["--calib", str(wiki_calibration_file(work))]))

    checkpoints, summaries = [], {}
    for index, (name, flags) in enumerate(rows):
        if flags is None:
            checkpoints.append(args.model)
            continue
        folder, saved = work / f"q{index}", work / f"q{index}.json"
        if not saved.exists():  # --work keeps checkpoints and their summaries between runs
            summary = localai("quantize", args.model, "-o", str(folder), *flags, threads=args.threads)
            saved.write_text(json.dumps(summary))
        summaries[name] = json.loads(saved.read_text())
        checkpoints.append(str(folder))
    # every row from one `localai eval` run: perplexity and batch-1 greedy decoding speed
    evaluated = localai("eval", *checkpoints, "--windows", str(args.windows), "--speed", threads=args.threads)
    results = [{"name": name, "checkpoint": path, **row, "quantize": summaries.get(name)}
               for (name, _), path, row in zip(rows, checkpoints, evaluated)]

    by_name = {r["name"]: r for r in results}
    ppl = {name: r["perplexity"] for name, r in by_name.items()}
    speed = {name: r["decode_tokens_per_s"] for name, r in by_name.items()}
    calibrated = "TurboQuant calibrated (wiki 600k+)" if args.wiki_calib else "TurboQuant calibrated"
    checks = {
        f"{calibrated} <= 30.0": ppl[calibrated] <= 30.0,
        f"{calibrated} < NF4": ppl[calibrated] < ppl["bitsandbytes NF4"],
        "data-free < int4": ppl["TurboQuant data-free"] < ppl["int4 RTN g64"],
        "data-free <= NF4 (aim)": ppl["TurboQuant data-free"] <= ppl["bitsandbytes NF4"],
        "TurboQuant decode >= NF4": speed["TurboQuant data-free"] >= speed["bitsandbytes NF4"],
        "TurboQuant decode >= fp32 / 2": speed["TurboQuant data-free"] >= speed["fp32"] / 2,
    }
    print("\n| weights | perplexity | decode tok/s | weight files | bits/weight | calibration |\n"
          "|---|---|---|---|---|---|", file=sys.stderr)
    for r in results:
        q = r["quantize"] or {}
        bits = f"{q['bits_per_weight']:.3f}" if q else "32"
        print(f"| {r['name']} | {r['perplexity']:.2f} | {r['decode_tokens_per_s']:.1f} | "
              f"{r['weight_bytes'] / 1e6:.0f} MB | {bits} | {q.get('calibration', '-')} |", file=sys.stderr)
    for check, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {check}", file=sys.stderr)
    print(json.dumps({"model": args.model, "windows": args.windows, "threads": args.threads, "rows": results,
                      "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
