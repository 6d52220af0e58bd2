"""Start worker processes, hold them at a barrier after load and warm-up, collect timelines.

Each worker is a fresh `python -m localai.bench.worker` with its own environment (so
`CUDA_VISIBLE_DEVICES` is set before CUDA starts). The barrier is the launcher itself:
it waits until every worker has said `ready`, then sends `go` to all of them at once.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from dataclasses import dataclass

from localai.bench.metrics import RequestTrace
from localai.bench.worker import WorkerSpec
from localai.errors import LocalaiError


@dataclass
class WorkerRun:
    """What one worker reported: its readiness line and one result per repeat."""

    spec: WorkerSpec
    ready: dict
    repeats: list[dict]

    def traces(self, repeat: int) -> list[RequestTrace]:
        return [RequestTrace.from_dict(row) for row in self.repeats[repeat]["traces"]]

    def peak_memory_mb(self, repeat: int) -> float:
        return self.repeats[repeat]["peak_memory_mb"]


class _Worker:
    def __init__(self, spec: WorkerSpec, env: dict[str, str]):
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localai.bench.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, **env}, text=True, bufsize=1)
        self.proc.stdin.write(spec.to_json() + "\n")
        self.proc.stdin.flush()

    def receive(self, expected: str) -> dict:
        """The worker's next protocol line, which must be `expected` (an `error` line raises)."""
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise LocalaiError(f"benchmark worker {self.proc.pid} exited (code {code}) before it reported",
                               "run with --debug or -v to see its log")
        message = json.loads(line)
        if message["event"] == "error":
            raise LocalaiError(message["message"])
        if message["event"] != expected:
            raise LocalaiError(f"benchmark worker sent {message['event']!r} instead of {expected!r}")
        return message

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self, graceful: bool) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30 if graceful else 0.5)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def receive_all(workers: list[_Worker], expected: str) -> list[dict]:
    """One `expected` line from every worker, in whatever order they come; the first failure raises."""
    messages: list[dict | None] = [None] * len(workers)
    with selectors.DefaultSelector() as selector:
        for index, worker in enumerate(workers):
            selector.register(worker.proc.stdout, selectors.EVENT_READ, index)
        while any(m is None for m in messages):
            for key, _ in selector.select():
                messages[key.data] = workers[key.data].receive(expected)
                selector.unregister(key.fileobj)
    return messages


def launch(specs: list[WorkerSpec], envs: list[dict[str, str]]) -> list[WorkerRun]:
    """Run the workers to completion; all start each repeat together."""
    workers: list[_Worker] = []
    finished = False
    try:
        for spec, env in zip(specs, envs):
            workers.append(_Worker(spec, env))
        ready = receive_all(workers, "ready")
        repeats: list[list[dict]] = [[] for _ in workers]
        for _ in range(specs[0].repeats):
            for worker in workers:
                worker.send("go")
            for index, message in enumerate(receive_all(workers, "result")):
                repeats[index].append(message)
        finished = True
        return [WorkerRun(w.spec, r, rep) for w, r, rep in zip(workers, ready, repeats)]
    finally:
        for worker in workers:
            worker.stop(graceful=finished)
