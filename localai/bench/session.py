"""From `localai bench` options to a checked plan, a report, or vLLM command lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from localai.bench.model import ModelFacts, locate_model, model_facts
from localai.bench.report import FORMATS, build_report, environment
from localai.bench.runner import BenchPlan, RunsInterrupted, execute, make_plan
from localai.bench.workload import Workload, check_context, check_fits, check_lengths, file_workload, random_workload
from localai.console import info, warn
from localai.errors import LocalaiError, UsageError

DEFAULT_REQUESTS = 32
DEFAULT_INPUT_LEN = 128


@dataclass
class BenchOptions:
    model: str
    dp: int = 1
    tp: int = 1
    compare: str | None = None
    scaling: bool = False
    input_len: int | None = None  # None: DEFAULT_INPUT_LEN for synthetic prompts
    output_len: int = 128
    num_requests: int | None = None
    prompts: Path | None = None
    batch_size: str = "auto"
    warmup: int | None = None
    repeats: int = 1
    seed: int = 0
    decode_mode: str | None = None
    fmt: str = "table"
    emit: str | None = None


@dataclass
class Prepared:
    options: BenchOptions
    hub_id: str | None  # the hub repo the model came from, when known
    facts: ModelFacts
    workload: Workload
    batch_size: int | None
    plan: BenchPlan | None  # None for --emit vllm, which runs nothing here


# the format a report file's name asks for when neither --format nor --json does
FORMAT_OF_SUFFIX = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".md": "md"}


def output_format(fmt: str | None, as_json: bool, output: Path | None = None) -> str:
    """The report format from --format and --json (the two naming different formats is a usage
    error), else from the extension of -o's file name, else a table."""
    if as_json and fmt not in (None, "json"):
        raise UsageError(f"--json and --format {fmt} ask for different formats", "give only one of them")
    if as_json or fmt:
        return "json" if as_json else fmt
    return FORMAT_OF_SUFFIX.get(output.suffix.lower(), "table") if output is not None else "table"


def _check_flags(o: BenchOptions) -> tuple[bool, int | None]:
    """Flag combinations the parser cannot judge; returns (compare, batch size or None for auto)."""
    if o.fmt not in FORMATS:
        raise UsageError(f"unknown format {o.fmt!r}", f"use --format {', '.join(FORMATS)}")
    if o.emit not in (None, "vllm"):
        raise UsageError(f"unknown --emit {o.emit!r}", "use --emit vllm")
    if o.dp < 1 or o.tp < 1:
        raise UsageError(f"--dp {o.dp} / --tp {o.tp}: both count processes, at least 1", "use e.g. --dp 2")
    compare = o.compare is not None
    if compare and sorted(p.strip() for p in o.compare.split(",")) != ["dp", "tp"]:
        raise UsageError(f"--compare {o.compare!r} is not understood", "use --compare dp,tp")
    if o.dp > 1 and o.tp > 1 and not compare:
        raise UsageError("--dp and --tp together (hybrid parallelism) is not supported",
                         "use one of them, or --compare dp,tp with --dp N")
    if o.scaling and not (compare or o.emit) and o.dp == o.tp == 1:  # it would run the one process twice
        raise UsageError("--scaling sets N processes against one alone, and --dp 1 --tp 1 is one process",
                         "add --dp N or --tp N with N of 2 or more, or drop --scaling")
    if compare and o.dp > 1 and o.tp > 1 and o.dp != o.tp:
        raise UsageError("--compare dp,tp runs both on the same devices", "give one of --dp N or --tp N")
    if o.decode_mode not in (None, "eager", "graphs", "compile"):
        raise UsageError(f"unknown --decode-mode {o.decode_mode!r}", "use eager, graphs or compile")
    if o.prompts is not None and o.input_len is not None:
        raise UsageError("--input-len sets the length of synthetic prompts; --prompts gives its own",
                         "drop one of them")
    if o.repeats < 1:
        raise UsageError(f"--repeats {o.repeats} is not a positive number", "use 1 or more")
    if o.warmup is not None and o.warmup < 0:
        raise UsageError(f"--warmup {o.warmup} is negative", "use 0 or more")
    if o.batch_size == "auto":
        return compare, None
    if not o.batch_size.isdigit() or int(o.batch_size) < 1:
        raise UsageError(f"--batch-size {o.batch_size!r} is not auto or a positive number", "use auto or e.g. 16")
    return compare, int(o.batch_size)


def _device_count(device: str) -> int:
    """GPUs visible, or CPU cores this process may use."""
    from localai.bench.dp import visible_gpus
    from localai.host import usable_cores

    return len(visible_gpus()) if device == "cuda" else len(usable_cores())


def prepare(o: BenchOptions) -> Prepared:
    """Resolve the model, build the workload, and check everything before any worker starts."""
    from localai.device import resolve_device
    from localai.settings import settings

    compare, batch_size = _check_flags(o)
    path, hub_id = locate_model(o.model)
    facts = model_facts(path)
    workload = _workload(o, facts, path)
    check_context(workload, facts.max_positions)
    if o.emit:
        return Prepared(o, hub_id, facts, workload, batch_size, None)
    device = resolve_device()
    if device == "cpu" and o.decode_mode not in (None, "eager"):
        raise LocalaiError(f"--decode-mode {o.decode_mode} needs a CUDA GPU", "drop it on the CPU")
    dp, tp = o.dp, o.tp
    if compare and max(dp, tp) == 1:  # every device, but no more processes than TP can shard the model over
        dp = tp = min(_device_count(device), facts.num_kv_heads)
    elif compare:
        dp = tp = max(dp, tp)
    plan = make_plan(facts, workload, device, dp, tp, compare=compare, scaling=o.scaling, batch_size=batch_size,
                     warmup=o.warmup, repeats=o.repeats, decode_mode=o.decode_mode,
                     verbosity=settings.verbosity)
    return Prepared(o, hub_id, facts, workload, batch_size, plan)


def _workload(o: BenchOptions, facts: ModelFacts, path: Path) -> Workload:
    if o.prompts is None:
        input_len = DEFAULT_INPUT_LEN if o.input_len is None else o.input_len
        num_requests = DEFAULT_REQUESTS if o.num_requests is None else o.num_requests
        check_lengths(num_requests, input_len, o.output_len)  # before check_fits: a bad length says so first
        check_fits(input_len, o.output_len, facts.max_positions)
        return random_workload(facts.vocab_size, facts.special_ids, num_requests, input_len, o.output_len, o.seed)
    from localai.loading import load_tokenizer

    tokenizer = load_tokenizer(path)
    return file_workload(o.prompts, lambda text: tokenizer(text)["input_ids"], o.num_requests, o.output_len, o.seed)


def benchmark(prepared: Prepared) -> dict:
    """Run the plan and return the report; after Ctrl-C, the report of the runs that had finished,
    marked "interrupted" (KeyboardInterrupt when none had)."""
    plan, o = prepared.plan, prepared.options
    work = plan.workload.describe()
    info(f"benchmarking {o.model}: {work['num_requests']} requests, input {work['input_len']} / output "
         f"{work['output_len']} tokens on {plan.device}")
    interrupted = False
    try:
        result = execute(plan)
    except RunsInterrupted as stop:  # keep what finished
        result, interrupted = stop.result, True
        warn(f"interrupted: the report holds the {len(result['runs'])} run(s) that finished")
    settings = {"dp": plan.dp, "tp": plan.tp, "compare": plan.compare, "scaling": plan.scaling,
                "batch_size": o.batch_size, "warmup": plan.warmup, "repeats": plan.repeats, "seed": o.seed,
                "decode_mode": plan.decode_mode}
    model = {"name": o.model, "hub_id": prepared.hub_id, **prepared.facts.describe()}
    report = build_report(environment(plan.device), model, work, settings, result)
    if interrupted:
        report["interrupted"] = True  # the command writes it, then exits 130
    return report


def vllm_commands(prepared: Prepared) -> str:
    """The vLLM command lines for the same model and workload (script, or JSON with --format json)."""
    from localai.bench.vllm import emit, render_script

    o, workload = prepared.options, prepared.workload
    emitted = emit(prepared.hub_id or o.model, prepared.facts.quantization, max(o.dp, o.tp), workload.max_input_len,
                   workload.output_len, workload.num_requests, prepared.batch_size or 32, o.seed,
                   prepared.facts.num_heads, prompts_file=str(o.prompts) if o.prompts else None)
    return json.dumps(emitted, indent=2) + "\n" if o.fmt == "json" else render_script(emitted)
