"""The bench launcher against fake workers: the protocol, and workers that hang or die."""

import math
import sys
import time
from pathlib import Path

import psutil
import pytest

from localai.bench import launcher
from localai.bench.launcher import Deadlines, launch
from localai.bench.worker import WorkerSpec
from localai.errors import LocalaiError

FAKE_WORKER = [sys.executable, str(Path(__file__).with_name("fake_bench_worker.py"))]
QUICK = Deadlines(timeout_s=1, per_token_s=0)
PATIENT = Deadlines(timeout_s=60)
pytestmark = pytest.mark.timeout(90)  # a launcher that waits forever fails instead of hanging the suite


def spec(requests: list[int], repeats: int = 1) -> WorkerSpec:
    return WorkerSpec(model="fake", device="cpu", workload={"output_len": 2}, request_ids=requests, batch_size=None,
                      warmup=None, repeats=repeats)


def fake_workers_left() -> list:
    return [p for p in psutil.Process().children(recursive=True) if "fake_bench_worker" in " ".join(p.cmdline())]


def launch_fakes(behaviours: list[str], deadlines: Deadlines, repeats: int = 1):
    specs = [spec([2 * i, 2 * i + 1], repeats) for i in range(len(behaviours))]
    return launch(specs, [{"FAKE_WORKER": b} for b in behaviours], deadlines, FAKE_WORKER)


def test_workers_report_ready_then_one_result_per_repeat():
    runs = launch_fakes(["ok", "ok"], PATIENT, repeats=2)
    assert [run.ready["engine"] for run in runs] == ["fake", "fake"]
    assert [len(run.repeats) for run in runs] == [2, 2]
    assert [t.request_id for t in runs[1].traces(1)] == [2, 3]
    assert fake_workers_left() == []


@pytest.mark.parametrize("behaviour, doing", [
    ("silent-loading", "while loading and warming up the model"),
    ("half-line", "while loading and warming up the model"),  # a line never finished is no message
    ("silent-repeat", "in timed repeat 1 of 1"),
])
def test_a_silent_worker_is_given_up_on_and_all_are_stopped(behaviour, doing):
    started = time.monotonic()
    with pytest.raises(LocalaiError) as raised:
        launch_fakes(["ok", behaviour], QUICK)
    assert time.monotonic() - started < 10
    line = raised.value.one_line()
    assert line.startswith("benchmark replica 1 (pid ") and f"said nothing for 1 s {doing}" in line
    assert "LOCALAI_BENCH_WORKER_TIMEOUT" in line
    assert fake_workers_left() == []


def test_a_worker_that_dies_is_reported_while_the_others_still_work():
    """Its pipe stays open (a child of its own holds it), so only its exit tells; the other never answers."""
    started = time.monotonic()
    with pytest.raises(LocalaiError, match=r"benchmark replica 0 \(pid \d+\) exited with code 3 while loading"):
        launch_fakes(["dies-leaving-pipe", "silent-loading"], PATIENT)
    assert time.monotonic() - started < 10
    assert fake_workers_left() == []


def test_a_worker_error_is_one_line_naming_the_worker():
    with pytest.raises(LocalaiError, match=r"^benchmark replica 1 \(pid \d+\): out of memory loading the model$"):
        launch_fakes(["ok", "fails"], PATIENT)
    assert fake_workers_left() == []


def test_the_error_of_a_worker_that_exits_at_once_is_not_lost_on_its_way(monkeypatch):
    """The worker writes its error and exits; its reader thread is slow to forward the line (a busy
    machine), so the launcher sees the exit first. It still reports the error, not just the exit code."""
    monkeypatch.setattr(launcher, "POLL_S", 0.05)  # checks for the exit long before the line arrives
    forward = launcher._Worker._forward_lines

    def slow_forward(self, inbox):
        self.proc.wait()
        time.sleep(0.3)
        forward(self, inbox)

    monkeypatch.setattr(launcher._Worker, "_forward_lines", slow_forward)
    with pytest.raises(LocalaiError, match=r"^benchmark replica 0 \(pid \d+\): out of memory loading the model$"):
        launch_fakes(["fails"], PATIENT)
    assert fake_workers_left() == []


def test_limits_grow_with_the_tokens_a_worker_generates(monkeypatch):
    deadlines = Deadlines(timeout_s=10, per_token_s=1.0)
    assert deadlines.repeat(spec([0, 1, 2])) == 10 + 3 * 2
    assert deadlines.loading(spec([0, 1, 2])) == 10 + 3 * 2  # warm-up: one batch, at most every request
    assert Deadlines(timeout_s=0).repeat(spec([0])) == math.inf
    monkeypatch.delenv("LOCALAI_BENCH_WORKER_TIMEOUT", raising=False)
    assert Deadlines.from_environment().timeout_s == 900
    monkeypatch.setenv("LOCALAI_BENCH_WORKER_TIMEOUT", "2.5")
    assert Deadlines.from_environment().timeout_s == 2.5
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv("LOCALAI_BENCH_WORKER_TIMEOUT", bad)
        with pytest.raises(LocalaiError, match="is not a number of seconds"):
            Deadlines.from_environment()
