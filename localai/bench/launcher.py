"""Start worker processes, hold them at a barrier after load and warm-up, collect timelines.

Each worker is a fresh `python -m localai.bench.worker` with its own environment (so
`CUDA_VISIBLE_DEVICES` is set before CUDA starts). The barrier is the launcher itself:
it waits until every worker has said `ready`, then sends `go` to all of them at once.

A worker that fails, exits, or says nothing for too long ends the run at once, with one
line naming it and what it was doing; the other workers are stopped. Too long is
LOCALAI_BENCH_WORKER_TIMEOUT seconds (default 900; 0 waits forever) plus one second per
output token the worker generates in that phase (its warm-up, or its share of a repeat).
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

from localai.bench.metrics import RequestTrace
from localai.bench.worker import WorkerSpec
from localai.errors import LocalaiError

TIMEOUT_VARIABLE = "LOCALAI_BENCH_WORKER_TIMEOUT"
DEFAULT_TIMEOUT_S = 900.0  # loading a big model from a slow disk, then warming it up, takes minutes
SECONDS_PER_TOKEN = 1.0  # a generous floor: a worker slower than one token a second is taken for stuck
POLL_S = 0.5  # how often the launcher checks that a quiet worker is still alive
EXIT_WAIT_S = 5.0  # how long a worker that closed its output gets to exit before it is reported
FORWARD_WAIT_S = 1.0  # how long the last lines of a worker that exited get to reach the launcher
WORKER_COMMAND = [sys.executable, "-m", "localai.bench.worker"]


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


@dataclass
class Deadlines:
    """How long a worker may say nothing: `timeout_s` plus `per_token_s` for each output token it
    generates before its next line. `timeout_s` 0: no limit."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    per_token_s: float = SECONDS_PER_TOKEN

    @classmethod
    def from_environment(cls) -> "Deadlines":
        text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
        if not text:
            return cls()
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not (0 <= seconds < math.inf):
            raise LocalaiError(f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds",
                               "set it to e.g. 1800, or to 0 to wait forever")
        return cls(timeout_s=seconds)

    def _limit(self, spec: WorkerSpec, requests: int) -> float:
        if self.timeout_s == 0:
            return math.inf
        return self.timeout_s + self.per_token_s * requests * spec.workload["output_len"]

    def loading(self, spec: WorkerSpec) -> float:
        """Seconds to load and warm up (a warm-up of one batch is at most all of its requests)."""
        return self._limit(spec, len(spec.request_ids) if spec.warmup is None else spec.warmup)

    def repeat(self, spec: WorkerSpec) -> float:
        """Seconds for one timed run of its requests."""
        return self._limit(spec, len(spec.request_ids))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _Worker:
    """One worker process. A thread of its own forwards each whole line it writes to the launcher's
    inbox, so waiting on several workers needs no select() on pipes (which Windows lacks)."""

    def __init__(self, index: int, spec: WorkerSpec, env: dict[str, str], command: list[str], inbox: queue.Queue):
        self.index, self.spec = index, spec
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **env})
        self.name = f"benchmark {'rank' if spec.tp_world > 1 else 'replica'} {index} (pid {self.proc.pid})"
        self.pending: deque[str | None] = deque()  # lines that came before the launcher asked for them
        self.reader = threading.Thread(target=self._forward_lines, args=(inbox,), name=f"read {self.name}",
                                       daemon=True)
        self.reader.start()

    def _forward_lines(self, inbox: queue.Queue) -> None:
        """(index, text) for each whole line written, then (index, None) once the output closes;
        a line cut short by the end of the output is no message."""
        try:
            for raw in self.proc.stdout:
                if raw.endswith(b"\n"):
                    inbox.put((self.index, raw.rstrip(b"\r\n").decode("utf-8", errors="replace")))
        except (OSError, ValueError):  # a failed read ends its output too (stop() closes it only after this thread)
            pass
        inbox.put((self.index, None))

    def send(self, line: str, doing: str) -> None:
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:  # BrokenPipeError: it is gone
            raise self.ended(doing) from None

    def message(self, line: str | None, expected: str, doing: str) -> dict:
        """The protocol line as a message, which must be `expected` (an `error` line raises, and so
        does None: the output closed)."""
        if line is None:
            raise self.ended(doing)
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            message = None
        event = message.get("event") if isinstance(message, dict) else None
        if event == "error":
            raise LocalaiError(f"{self.name}: {message.get('message')}")
        if event != expected:
            raise LocalaiError(f"{self.name} sent {(event or line[:60])!r} instead of {expected!r}")
        return message

    def ended(self, doing: str) -> LocalaiError:
        """The error for a worker that exited, or closed its output, while `doing` something."""
        try:
            code = self.proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            how = "closed its output"
        else:
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        return LocalaiError(f"{self.name} {how} {doing}", "run with --debug or -v to see its log")

    def silent(self, limit: float, doing: str) -> LocalaiError:
        return LocalaiError(f"{self.name} said nothing for {limit:g} s {doing}",
                            f"if it is just slow, set {TIMEOUT_VARIABLE} to more seconds (0 waits forever); "
                            "run with -v to see its log")

    def stop(self, graceful: bool) -> None:
        """Close its input (a worker waiting for `go` takes that as the end), wait a little, then kill."""
        try:
            self.proc.stdin.close()
        except OSError:  # BrokenPipeError: it is gone already
            pass
        try:
            self.proc.wait(timeout=30 if graceful else 0.5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=EXIT_WAIT_S)  # its output ends with it (or with the child holding it)
        if not self.reader.is_alive():
            self.proc.stdout.close()


def receive_all(workers: list[_Worker], inbox: queue.Queue, expected: str, limits: list[float],
                doing: str) -> list[dict]:
    """One `expected` line from every worker, in whatever order they come. The first worker to fail,
    to exit, or to say nothing for its limit (seconds, one per worker) raises at once."""
    start = time.monotonic()
    messages: dict[int, dict] = {}
    for worker in workers:  # what a worker wrote before it was asked
        if worker.pending:
            messages[worker.index] = worker.message(worker.pending.popleft(), expected, doing)
    while len(messages) < len(workers):
        waiting = [i for i in range(len(workers)) if i not in messages]
        elapsed = time.monotonic() - start
        late = [i for i in waiting if elapsed >= limits[i]]
        if late:
            raise workers[late[0]].silent(limits[late[0]], doing)
        try:
            index, line = inbox.get(timeout=min([POLL_S] + [limits[i] - elapsed for i in waiting]))
        except queue.Empty:
            # a worker that exited: what it wrote last (its error, say) may still be on the way to the
            # inbox, so its reader gets a moment to forward it; one whose output stays open (a child of
            # its own holds it) is over
            for i in waiting:
                if workers[i].proc.poll() is not None:
                    workers[i].reader.join(timeout=FORWARD_WAIT_S)
                    if workers[i].reader.is_alive():
                        raise workers[i].ended(doing)
            continue
        if index in messages:
            workers[index].pending.append(line)
        else:
            messages[index] = workers[index].message(line, expected, doing)
    return [messages[i] for i in range(len(workers))]


def launch(specs: list[WorkerSpec], envs: list[dict[str, str]], deadlines: Deadlines | None = None,
           command: list[str] | None = None) -> list[WorkerRun]:
    """Run the workers to completion; all start each repeat together. `deadlines`: from the
    environment unless given; `command`: the worker program (the localai worker unless given)."""
    deadlines = deadlines or Deadlines.from_environment()
    workers: list[_Worker] = []
    inbox: queue.Queue = queue.Queue()  # (worker index, line or None) from every worker's reader
    finished = False
    try:
        for index, (spec, env) in enumerate(zip(specs, envs)):
            workers.append(_Worker(index, spec, env, command or WORKER_COMMAND, inbox))
            workers[-1].send(spec.to_json(), "as it started")
        ready = receive_all(workers, inbox, "ready", [deadlines.loading(s) for s in specs],
                            "while loading and warming up the model")
        repeats: list[list[dict]] = [[] for _ in workers]
        for repeat in range(specs[0].repeats):
            doing = f"in timed repeat {repeat + 1} of {specs[0].repeats}"
            for worker in workers:
                worker.send("go", doing)
            results = receive_all(workers, inbox, "result", [deadlines.repeat(s) for s in specs], doing)
            for index, message in enumerate(results):
                repeats[index].append(message)
        finished = True
        return [WorkerRun(w.spec, r, rep) for w, r, rep in zip(workers, ready, repeats)]
    finally:
        for worker in workers:
            worker.stop(graceful=finished)
