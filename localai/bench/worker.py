"""One benchmark worker process: a replica (or one tensor-parallel rank) of the model.

Run as `python -m localai.bench.worker`. The launcher writes a JSON spec on stdin; the
worker pins itself to its cores, loads the model, warms up, says `ready` and waits. Each
`go` line on stdin starts one timed repeat whose request timelines go back as a JSON line.
Only protocol lines go to the real stdout; anything a library prints lands on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass


@dataclass
class WorkerSpec:
    model: str  # a local model folder
    device: str  # cpu | cuda
    workload: dict  # Workload.to_dict()
    request_ids: list[int]  # indices into the workload's prompts
    batch_size: int | None  # None: the engine sizes the batch for the memory left
    warmup: int | None  # warm-up requests, untimed; None: one full batch
    repeats: int
    cores: list[int] | None = None  # CPU cores this worker may use
    tp_rank: int = 0
    tp_world: int = 1
    tp_init: str = ""  # torch.distributed init_method, e.g. tcp://127.0.0.1:29500
    decode_mode: str | None = None  # eager | graphs | compile; None: the engine's choice for the device
    return_tokens: bool = False
    verbosity: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def pin_cores(cores: list[int] | None) -> None:
    """Restrict this process and its math libraries to `cores` (before torch starts threads). Where the
    OS has no affinity call (macOS, Windows) only the number of threads is limited."""
    if not cores:
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(len(cores))


def peak_memory_mb(device: str) -> float:
    from localai.engine.sizing import MIB, peak_memory  # imports torch: not before pin_cores

    return peak_memory(device) / MIB


def build_engine(spec: WorkerSpec):
    """Load the model, shard it for tensor parallelism if asked, and wrap it in the localai engine."""
    import torch

    from localai.bench.model import load_for_bench
    from localai.engine.api import Engine
    from localai.loading import load_tokenizer

    if spec.cores:
        torch.set_num_threads(len(spec.cores))
    if spec.device == "cuda" and spec.tp_world > 1:
        torch.cuda.set_device(spec.tp_rank)
    model = load_for_bench(spec.model, spec.device, spec.tp_rank)
    if spec.tp_world == 1:
        return Engine(model, load_tokenizer(spec.model), decode_mode=spec.decode_mode)
    from localai.bench.tp import add_all_reduce, init_group, shard_model

    init_group(spec.tp_rank, spec.tp_world, spec.tp_init, spec.device)
    shard_model(model, spec.tp_rank, spec.tp_world)
    engine = Engine(model, load_tokenizer(spec.model), decode_mode=spec.decode_mode)
    add_all_reduce(engine)
    return engine


def serve(spec: WorkerSpec, protocol, commands) -> None:
    """Load and warm up, report ready, then one timed run per `go`."""
    from localai.bench.driver import plan, run_requests
    from localai.bench.workload import Workload

    workload = Workload.from_dict(spec.workload)
    prompts = [workload.prompts[i] for i in spec.request_ids]
    engine = build_engine(spec)
    memory_plan = plan(engine, prompts, workload.output_len, spec.batch_size)
    warmup = memory_plan.batch if spec.warmup is None else spec.warmup
    if warmup:
        warm_prompts = [prompts[i % len(prompts)] for i in range(warmup)]
        run_requests(engine, warm_prompts, list(range(warmup)), workload.output_len, memory_plan)
    send(protocol, {"event": "ready", "batch_size": memory_plan.batch, "engine": engine.runner.kind,
                    "decode_mode": getattr(engine.runner, "decode_mode", "eager"), "pid": os.getpid(),
                    "cores": spec.cores})
    for repeat in range(spec.repeats):
        if commands.readline().strip() != "go":
            return
        traces = run_requests(engine, prompts, spec.request_ids, workload.output_len, memory_plan)
        rows = [t.to_dict() for t in traces]
        if not spec.return_tokens:
            for row in rows:
                row.pop("token_ids")
        send(protocol, {"event": "result", "repeat": repeat, "traces": rows,
                        "peak_memory_mb": peak_memory_mb(spec.device)})


def send(protocol, message: dict) -> None:
    protocol.write(json.dumps(message) + "\n")
    protocol.flush()


def main() -> None:
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    spec = WorkerSpec(**json.loads(sys.stdin.readline()))
    pin_cores(spec.cores)
    from localai.errors import LocalaiError
    from localai.settings import settings

    settings.verbosity = spec.verbosity
    if spec.verbosity < 1:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import logging

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        serve(spec, protocol, sys.stdin)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the launcher reports it
        sys.exit(130)
    except LocalaiError as exc:
        send(protocol, {"event": "error", "message": exc.one_line()})
        sys.exit(1)
    except Exception as exc:  # the launcher turns this into one line for the user
        if settings.debug:
            import traceback

            traceback.print_exc()
        send(protocol, {"event": "error", "message": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        sys.exit(1)


if __name__ == "__main__":
    main()
