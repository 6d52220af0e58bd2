"""`localai bench` on one GPU: batch sweep 1, 8, 32, 64 for bf16 and TurboQuant, as a bench report.

run() -> dict, CUDA only, under 60 s on one H100. A small Llama-shaped model with random
weights (no download) is written in bf16 and as a data-free TurboQuant checkpoint; each
batch size runs one full batch through the localai engine in this process (input 128 /
output 64 tokens, EOS ignored, one untimed warm-up batch), and one `localai bench` run
through the worker processes checks the multi-process path on CUDA. The result is the
report `localai bench --format json` writes, one run per (weights, batch size); every
measurement records its error instead of stopping the others.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]
from checkout import import_localai  # noqa: E402
from target import DEVICE, REHEARSAL, missing_device, peak_memory_bytes, reset_peak_memory, sized  # noqa: E402

BATCHES = (1, 8, 32, 64)
INPUT_LEN, OUTPUT_LEN = sized(128, 32), sized(64, 16)
SHAPE = sized(dict(hidden=1024, layers=8, heads=16, kv_heads=4, intermediate=2816, vocab=32000),
              dict(hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256, vocab=1024))
BUDGET_S = 50  # leave the rest of the section's time for the report


def _error(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0], "trace": traceback.format_exc()[-1200:]}


def write_bf16_model(folder: Path) -> Path:
    import torch
    from tiny_models import build_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=SHAPE["vocab"], hidden_size=SHAPE["hidden"], num_hidden_layers=SHAPE["layers"],
                         num_attention_heads=SHAPE["heads"], num_key_value_heads=SHAPE["kv_heads"],
                         intermediate_size=SHAPE["intermediate"], max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_turboquant_model(source: Path, folder: Path) -> Path:
    """Data-free TurboQuant checkpoint of `source`, as `localai quantize --no-calib` writes it."""
    from localai.quant.pipeline import QuantizeOptions, quantize

    quantize(source, folder, QuantizeOptions(method="turboquant", use_calib=False), device=DEVICE)
    return folder


def sweep(folder: Path, label: str, deadline: float) -> tuple[list[dict], list[dict]]:
    """One run row per batch size (or its error) for the model in `folder`."""
    from localai.bench.driver import plan, run_requests
    from localai.bench.metrics import over_repeats, summarize
    from localai.bench.model import model_facts
    from localai.bench.workload import random_workload
    from localai.engine.api import Engine
    from localai.loading import load_model, load_tokenizer

    facts = model_facts(folder)
    model = load_model(folder, DEVICE)
    if facts.quantization != "none" and not any("Turbo" in type(m).__name__ for m in model.modules()):
        raise RuntimeError(f"{label}: the checkpoint loaded without its 4-bit layers (quantizer not registered)")
    engine = Engine(model, load_tokenizer(folder))
    rows, errors = [], []
    for batch in BATCHES:
        name = f"{label}-b{batch}"
        if time.perf_counter() > deadline:
            errors.append({"run": name, "error": "skipped: out of time"})
            continue
        try:
            work = random_workload(facts.vocab_size, facts.special_ids, batch, INPUT_LEN, OUTPUT_LEN, seed=batch)
            ids = list(range(batch))
            memory_plan = plan(engine, work.prompts, OUTPUT_LEN, batch)
            run_requests(engine, work.prompts, ids, OUTPUT_LEN, memory_plan)  # warm-up
            reset_peak_memory()
            traces = run_requests(engine, work.prompts, ids, OUTPUT_LEN, memory_plan)
            metrics = summarize([traces], [peak_memory_bytes() / 2**20])
            rows.append({"name": name, "mode": "single", "processes": 1, "placements": [sized("cuda:0", "cpu")],
                         "batch_size": memory_plan.batch, "engine": engine.runner.kind,
                         "decode_mode": getattr(engine.runner, "decode_mode", "eager"), "metrics": metrics,
                         "metrics_sd": over_repeats([metrics])[1], "repeats": [metrics], "replicas": []})
        except Exception as exc:  # record and go on with the next batch size
            errors.append({"run": name, **_error(exc)})
    return rows, errors


def worker_path(folder: Path) -> dict:
    """`localai bench --dp N` through its worker processes on CUDA (N = visible GPUs, at most 2;
    two CPU replicas in a rehearsal)."""
    import torch

    from localai.bench.model import model_facts
    from localai.bench.runner import execute, make_plan
    from localai.bench.workload import random_workload

    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")  # for the workers
    dp = 2 if REHEARSAL else min(2, torch.cuda.device_count())
    facts = model_facts(folder)
    work = random_workload(facts.vocab_size, facts.special_ids, 16 * dp, INPUT_LEN, OUTPUT_LEN, seed=0)
    run = execute(make_plan(facts, work, DEVICE, dp, 1, batch_size=8))["runs"][0]
    return {"run": run["name"], "placements": run["placements"], "engine": run["engine"], "metrics": run["metrics"]}


def run() -> dict:
    if why := missing_device():
        return {"error": why}
    from localai.bench.report import build_report, environment

    import_localai()
    deadline = time.perf_counter() + BUDGET_S
    scratch = Path(tempfile.mkdtemp(prefix="bench-check-"))
    runs, errors, timings = [], [], {}
    models = {}
    try:
        models["bf16"] = write_bf16_model(scratch / "bf16")
    except Exception as exc:
        errors.append({"run": "bf16 model", **_error(exc)})
    if "bf16" in models:
        start = time.perf_counter()
        try:
            models["turboquant"] = write_turboquant_model(models["bf16"], scratch / "turboquant")
        except Exception as exc:
            errors.append({"run": "turboquant model", **_error(exc)})
        timings["quantize_s"] = time.perf_counter() - start
    for label, folder in models.items():
        try:
            rows, failed = sweep(folder, label, deadline)
            runs += rows
            errors += failed
        except Exception as exc:
            errors.append({"run": label, **_error(exc)})
    workers = {"error": "skipped: out of time"}
    if "bf16" in models and time.perf_counter() < deadline - 5:
        try:
            workers = worker_path(models["bf16"])
        except Exception as exc:
            workers = _error(exc)
    workload = {"source": "random", "num_requests": "= batch size", "input_len": INPUT_LEN, "output_len": OUTPUT_LEN,
                "seed": "= batch size"}
    model = {"name": "random Llama-shaped", **SHAPE}
    report = build_report(environment(DEVICE), model, workload, {"batches": list(BATCHES), "warmup": "one batch"},
                          {"runs": runs})
    report.update(errors=errors, timings=timings, worker_path=workers)
    report["summary"] = {run["name"]: round(run["metrics"]["output_throughput"], 1) for run in runs}
    return report


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, default=str))
