"""One `localai bench` invocation: which runs to make (DP, TP, scaling baselines) and their rows."""

from __future__ import annotations

from dataclasses import dataclass

from localai.bench.dp import Placement, placements, run_dp
from localai.bench.launcher import WorkerRun
from localai.bench.metrics import over_repeats, summarize
from localai.bench.model import ModelFacts
from localai.bench.tp import check_shardable, run_tp
from localai.bench.workload import Workload, split
from localai.errors import UsageError


@dataclass
class BenchPlan:
    facts: ModelFacts
    workload: Workload
    device: str  # cpu | cuda
    places: list[Placement]  # one per process of the parallel runs
    dp: int = 1
    tp: int = 1
    compare: bool = False  # run DP and TP on the same devices, side by side
    scaling: bool = False  # also one process alone per parallel run, for scaling efficiency (see run_alone)
    batch_size: int | None = None  # None: auto
    warmup: int | None = None
    repeats: int = 1
    decode_mode: str | None = None  # None: the engine's choice (TP: eager, and DP too when compared)
    verbosity: int = 0

    @property
    def width(self) -> int:
        """How many devices (or core groups) the parallel runs use."""
        return max(self.dp, self.tp)

    @property
    def wants_tp(self) -> bool:
        return self.tp > 1 or self.compare

    @property
    def wants_dp(self) -> bool:
        return self.tp == 1 or self.compare

    def worker_options(self, mode: str, return_tokens: bool) -> dict:
        return {"batch_size": self.batch_size, "warmup": self.warmup, "repeats": self.repeats,
                "decode_mode": self.decode_mode_for(mode), "return_tokens": return_tokens,
                "verbosity": self.verbosity}

    def decode_mode_for(self, mode: str) -> str | None:
        """TP decodes eagerly unless asked (collectives inside captured graphs are unproven);
        a DP run compared with it uses the same mode, so the two differ only in parallelism."""
        if self.decode_mode or (mode == "dp" and not self.compare):
            return self.decode_mode
        return "eager"


def make_plan(facts: ModelFacts, workload: Workload, device: str, dp: int, tp: int, **options) -> BenchPlan:
    """A plan whose processes fit the devices (or cores), whose model can be sharded if asked, and
    whose data-parallel replicas all have a request."""
    places = placements(max(dp, tp), device, "--tp" if tp > dp else "--dp")
    plan = BenchPlan(facts=facts, workload=workload, device=device, places=places, dp=dp, tp=tp, **options)
    if plan.wants_tp:
        check_shardable(facts.model_type, facts.num_kv_heads, len(places), facts.quantization)
    if plan.wants_dp and workload.num_requests < len(places):  # tensor-parallel ranks all share every request
        raise UsageError(f"{workload.num_requests} request(s) leave some of the {len(places)} replicas idle",
                         f"use --num-requests {len(places)} or more (prompts from a file are repeated)")
    return plan


def run_row(name: str, mode: str, runs: list[WorkerRun], places: list[Placement]) -> dict:
    """Metrics of one run: mean and sd over repeats, plus one row per replica (DP) or rank (TP)."""
    timed = runs[:1] if mode == "tp" else runs  # TP ranks replay the same requests
    repeats = []
    for r in range(len(runs[0].repeats)):
        memory = [run.peak_memory_mb(r) for run in runs]
        repeats.append(summarize([run.traces(r) for run in timed], memory))
    mean, sd = over_repeats(repeats)
    replicas = []
    for index, (run, place) in enumerate(zip(runs, places)):
        own = [summarize([run.traces(r)], [run.peak_memory_mb(r)]) for r in range(len(run.repeats))]
        replicas.append({"replica": index, "placement": place.label, "batch_size": run.ready["batch_size"],
                         "requests": len(run.spec.request_ids), **over_repeats(own)[0]})
    return {"name": name, "mode": mode, "processes": len(runs), "placements": [p.label for p in places],
            "batch_size": runs[0].ready["batch_size"], "engine": runs[0].ready["engine"],
            "decode_mode": runs[0].ready["decode_mode"], "metrics": mean, "metrics_sd": sd, "repeats": repeats,
            "replicas": replicas}


def interconnect(places: list[Placement]) -> str:
    """How TP ranks talk: GPU peer access yes/no, or shared memory on one CPU."""
    if places[0].device != "cuda" or len(places) < 2:
        return "cpu: gloo over loopback, shared memory" if places[0].device == "cpu" else "single device"
    import torch

    peer = all(torch.cuda.can_device_access_peer(a, b) for a in range(len(places)) for b in range(len(places)) if a != b)
    return f"cuda: NCCL, peer access {'yes' if peer else 'no'}"


def tokens_by_request(runs: list[WorkerRun], mode: str) -> dict[int, list[int]]:
    rows = runs[0].repeats[0]["traces"] if mode == "tp" else [t for run in runs for t in run.repeats[0]["traces"]]
    return {row["request_id"]: row["token_ids"] for row in rows}


class RunsInterrupted(KeyboardInterrupt):
    """Ctrl-C after some runs had finished: `result` holds them ({"runs": [...]}), and the scaling
    entries and comparison worked out from them before the interruption."""

    def __init__(self, result: dict):
        super().__init__()
        self.result = result


def execute(plan: BenchPlan) -> dict:
    """Every run the plan asks for; returns {"runs": [...], "comparison": ..., "scaling": [...]}, with
    one scaling entry per parallel run. Ctrl-C after a run finished raises RunsInterrupted with what
    had finished."""
    result: dict = {"runs": []}
    try:
        _execute(plan, result)
    except KeyboardInterrupt:
        if not result["runs"]:
            raise
        raise RunsInterrupted(result) from None
    return result


def _execute(plan: BenchPlan, result: dict) -> None:
    model, workload, places, runs = plan.facts.path, plan.workload, plan.places, result["runs"]
    everything = list(range(workload.num_requests))
    tokens = {}
    if plan.wants_dp:
        dp_runs = run_dp(model, workload, places, everything, **plan.worker_options("dp", plan.compare))
        runs.append(run_row(f"dp{len(places)}", "dp", dp_runs, places))
        if plan.compare:
            tokens["dp"] = tokens_by_request(dp_runs, "dp")
    if plan.wants_tp:
        tp_runs = run_tp(model, workload, places, everything, **plan.worker_options("tp", plan.compare))
        row = run_row(f"tp{len(places)}", "tp", tp_runs, places)
        row["interconnect"] = interconnect(places)
        runs.append(row)
        if plan.compare:
            tokens["tp"] = tokens_by_request(tp_runs, "tp")
    if plan.compare:
        result["comparison"] = comparison(runs[0], runs[1], tokens["dp"] == tokens["tp"])
    if plan.scaling:
        baselines: dict[tuple, dict] = {}  # (requests, decode mode) -> the run alone doing that work
        for parallel in list(runs):  # the baselines are appended after the parallel runs
            work = (tuple(alone_requests(plan, parallel["mode"])), plan.decode_mode_for(parallel["mode"]))
            if work not in baselines:
                baselines[work] = run_alone(plan, parallel["mode"])
                runs.append(baselines[work])
            result.setdefault("scaling", []).append(scaling(parallel, baselines[work], len(places)))


def alone_requests(plan: BenchPlan, mode: str) -> list[int]:
    """The requests of the scaling baseline for `mode` (see run_alone)."""
    everything = list(range(plan.workload.num_requests))
    return split(len(everything), len(plan.places))[0] if mode == "dp" else everything


def run_alone(plan: BenchPlan, mode: str) -> dict:
    """The scaling baseline: one unsharded process on the first placement (one process's share of the
    devices), doing what the parallel run's processes do. For DP that is one replica's share of the
    requests, so the speed-up shows what running side by side costs; for TP it is every request, the
    same work the ranks split, so the speed-up shows what sharding gains. Decodes as `mode` does."""
    alone = run_dp(plan.facts.path, plan.workload, plan.places[:1], alone_requests(plan, mode),
                   **plan.worker_options(mode, False))
    return run_row(f"{mode}1-alone", mode, alone, plan.places[:1])


def scaling(parallel: dict, alone: dict, n: int) -> dict:
    """Speed-up of N processes over one process alone on one process's share of the devices."""
    key = "total_token_throughput"
    speedup = parallel["metrics"][key] / alone["metrics"][key]
    return {"run": parallel["name"], "baseline": alone["name"], "processes": n, "metric": key,
            "speedup": speedup, "efficiency": speedup / n}


def comparison(dp: dict, tp: dict, outputs_match: bool) -> dict:
    key = "total_token_throughput"
    return {"dp": dp["name"], "tp": tp["name"], "metric": key, "dp_over_tp": dp["metrics"][key] / tp["metrics"][key],
            "interconnect": tp.get("interconnect"), "greedy_outputs_match": outputs_match}
