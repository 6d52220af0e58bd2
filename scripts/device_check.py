"""GPU checks in one run: kernel correctness and speed, the generation engine,
Voxtral TTS and the benchmark sweep, written to one JSON report.

    python scripts/device_check.py [--out report.json] [--only kernels,engine] [--rehearse]

Each section lives in scripts/gpu_checks/<name>.py and exposes `run() -> dict`.
Sections run in their own process with a time limit, so one failure or hang
does not lose the others. Needs a CUDA GPU; --rehearse walks every section on
the CPU at toy sizes instead (Triton under its interpreter), to find a broken
check before GPU time is spent on it. A rehearsal's numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = {"kernels": 100, "engine": 100, "tts": 120, "bench": 70}  # name -> seconds allowed
MARK = "@@REPORT@@"


def run_section(name: str, limit: float, env: dict[str, str]) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, %r); import %s as section; "
        "print(%r + json.dumps(section.run(), default=str), flush=True)"
    ) % (str(HERE / "gpu_checks"), name, MARK)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=limit,
                              env={**os.environ, **env})
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        return {"error": f"timed out after {limit:.0f} s", "stderr_tail": tail.decode() if isinstance(tail, bytes) else tail}
    seconds = round(time.perf_counter() - start, 1)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            result = json.loads(line[len(MARK):])
            result["section_seconds"] = seconds
            return result
    return {"error": f"exit code {proc.returncode}, no report", "stderr_tail": proc.stderr[-3000:], "section_seconds": seconds}


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gb=round(props.total_memory / 2**30, 1))
    for name in ("triton", "transformers", "bitsandbytes"):
        try:
            env[name] = __import__(name).__version__
        except Exception as exc:  # report what is missing, keep going
            env[name] = f"unavailable: {exc}"
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "device_report.json"))
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--rehearse", action="store_true", help="run every check on the CPU at toy sizes")
    args = parser.parse_args()
    names = args.only.split(",")
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)} (sections: {', '.join(SECTIONS)})")
    env = {"LOCALAI_CHECK_REHEARSAL": "1", "TRITON_INTERPRET": "1"} if args.rehearse else {}
    report = {"environment": {**environment(), "rehearsal": args.rehearse}, "sections": {}}
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        report["sections"][name] = run_section(name, SECTIONS[name], env)
        print(json.dumps(report["sections"][name], indent=1, default=str)[:6000], file=sys.stderr, flush=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
