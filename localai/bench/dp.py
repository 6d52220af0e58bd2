"""Data parallelism: N full replicas in N processes, each on its own device or cores.

On CUDA each replica sees one GPU through `CUDA_VISIBLE_DEVICES`. On CPU the cores this
process may use are divided between the replicas (`os.sched_setaffinity` plus
`torch.set_num_threads` in each worker; where the OS has no affinity call, macOS and
Windows, only the thread counts are divided and the OS places the threads). Requests are
split evenly; all replicas start together after load and warm-up, and the aggregate
throughput counts all tokens over (last finish - first start).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from localai.bench.launcher import WorkerRun, launch
from localai.bench.worker import WorkerSpec
from localai.bench.workload import Workload, split
from localai.errors import LocalaiError
from localai.host import usable_cores


@dataclass
class Placement:
    device: str  # cpu | cuda
    label: str  # what the report shows, e.g. "cpu cores 0-3" or "cuda:1"
    env: dict[str, str]
    cores: list[int] | None = None


def visible_gpus() -> list[str]:
    """GPU ids as CUDA_VISIBLE_DEVICES names them (or 0..n-1 when it is unset)."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [item.strip() for item in listed.split(",") if item.strip()][:count]


def _core_label(cores: list[int]) -> str:
    return f"cpu core {cores[0]}" if len(cores) == 1 else f"cpu cores {cores[0]}-{cores[-1]}"


def placements(n: int, device: str, flag: str = "--dp") -> list[Placement]:
    """One placement per process: its own GPU, or its share of the CPU cores."""
    if n < 1:
        raise LocalaiError(f"{flag} {n} is not a positive number", f"use {flag} 1 or more")
    if device == "cuda":
        gpus = visible_gpus()
        if n > len(gpus):
            raise LocalaiError(f"{flag} {n} needs {n} GPUs but {len(gpus)} are visible",
                               f"use {flag} {len(gpus)} or less, or --device cpu")
        return [Placement("cuda", f"cuda:{gpu}", {"CUDA_VISIBLE_DEVICES": gpu}) for gpu in gpus[:n]]
    cores = usable_cores()
    if n > len(cores):
        raise LocalaiError(f"{flag} {n} needs {n} CPU cores but this process may use {len(cores)}",
                           f"use {flag} {len(cores)} or less")
    groups = [[cores[i] for i in share] for share in split(len(cores), n)]
    return [Placement("cpu", _core_label(group), {"CUDA_VISIBLE_DEVICES": ""}, group) for group in groups]


def run_dp(model: str, workload: Workload, places: list[Placement], request_ids: list[int], **options) -> list[WorkerRun]:
    """One replica per placement; `request_ids` split evenly between them."""
    shares = split(len(request_ids), len(places))
    specs = [WorkerSpec(model=model, device=place.device, workload=workload.to_dict(),
                        request_ids=[request_ids[i] for i in share], cores=place.cores, **options)
             for place, share in zip(places, shares)]
    return launch(specs, [place.env for place in places])
