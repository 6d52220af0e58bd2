"""What the host has (memory, peak resident set, usable cores) on Linux, and the macOS and Windows branches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from localai import host
from localai.engine import sizing

MIB = 1 << 20
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc and getrusage")


def proc_meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes, the way memory_info used to read it."""
    info = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    return info


@LINUX
def test_host_memory_on_linux_is_memavailable_and_memtotal():
    before = proc_meminfo()
    available, total = sizing.memory_info("cpu")
    after = proc_meminfo()
    assert total == before["MemTotal"] == after["MemTotal"]
    # MemAvailable moves as other processes run: it lies between two readings around ours (plus slack)
    low, high = sorted((before["MemAvailable"], after["MemAvailable"]))
    assert low - 64 * MIB <= available <= high + 64 * MIB


@LINUX
def test_peak_resident_set_on_linux_is_ru_maxrss_in_kib():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = sizing.peak_memory("cpu")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert before <= peak <= after


@pytest.mark.skipif(sys.platform == "win32", reason="no getrusage")
def test_peak_resident_set_on_macos_is_ru_maxrss_in_bytes(monkeypatch):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    monkeypatch.setattr(sys, "platform", "darwin")
    peak = host.peak_rss()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert before <= peak <= after  # taken as it comes: macOS counts bytes


def test_peak_resident_set_on_windows_is_the_peak_working_set(monkeypatch):
    # Windows has no getrusage: the branch must not touch `resource`, and psutil's Windows-only field is faked
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "resource", None)
    monkeypatch.setattr(host.psutil, "Process", lambda: SimpleNamespace(
        memory_info=lambda: SimpleNamespace(rss=100 * MIB, peak_wset=300 * MIB)))
    assert host.peak_rss() == sizing.peak_memory("cpu") == 300 * MIB


@LINUX
def test_the_bench_worker_reports_the_same_peak_as_before_on_linux():
    import resource

    from localai.bench.worker import peak_memory_mb

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # what it computed itself: KiB / 1024
    peak = peak_memory_mb("cpu")
    assert before <= peak <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def test_a_bench_worker_without_an_affinity_call_still_limits_its_threads(monkeypatch):
    from localai.bench.worker import pin_cores

    for name in THREAD_VARIABLES:
        monkeypatch.setenv(name, "99")  # restored after the test
    if hasattr(os, "sched_setaffinity"):
        monkeypatch.delattr(os, "sched_setaffinity")  # as on macOS and Windows
    pin_cores([0, 1])
    assert [os.environ[name] for name in THREAD_VARIABLES] == ["2", "2", "2"]


def test_usable_cores_are_the_affinity_where_there_is_one_else_all(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        assert host.usable_cores() == sorted(os.sched_getaffinity(0))
        monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS and Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert host.usable_cores() == [0, 1, 2, 3, 4, 5]
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable"
    assert host.usable_cores() == [0]


def test_sizing_and_the_bench_worker_import_where_there_is_no_resource_module():
    """Windows has no `resource`: generate, chat, eval and bench import these modules."""
    code = textwrap.dedent("""
        import sys
        import psutil  # first: its Linux backend needs `resource` (its Windows backend does not)
        sys.modules["resource"] = None  # `import resource` now raises ImportError
        import localai.engine.sizing, localai.bench.worker, localai.bench.dp, localai.bench.report
        available, total = localai.engine.sizing.memory_info("cpu")
        assert 0 < available <= total, (available, total)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity call")
def test_a_bench_worker_pins_itself_where_there_is_an_affinity_call(monkeypatch):
    from localai.bench.worker import pin_cores

    for name in THREAD_VARIABLES:
        monkeypatch.setenv(name, "99")
    cores = sorted(os.sched_getaffinity(0))
    chosen = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, wanted: chosen.append((pid, list(wanted))))
    pin_cores(cores[:1])
    assert chosen == [(0, cores[:1])] and os.environ["OMP_NUM_THREADS"] == "1"


def test_cpu_replicas_and_the_bench_report_use_all_cores_where_there_is_no_affinity(monkeypatch):
    from localai.bench import dp, report

    if hasattr(os, "sched_getaffinity"):
        monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS and Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    places = dp.placements(2, "cpu")
    assert [(p.label, p.cores) for p in places] == [("cpu cores 0-1", [0, 1]), ("cpu cores 2-3", [2, 3])]
    assert report.environment("cpu")["usable_cores"] == 4
