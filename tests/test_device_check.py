"""scripts/device_check.py: every GPU check walked on the CPU at toy sizes (--rehearse), so a
check broken by a library change fails here instead of on a GPU's scarce minutes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "device_check.py"


def failures(node, where: str = "") -> list[str]:
    """Every 'error' found anywhere in a report, with its path."""
    found = []
    if isinstance(node, dict):
        if "error" in node:
            found.append(f"{where}: {str(node['error'])[:300]}")
        for key, value in node.items():
            found += failures(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += failures(value, f"{where}[{index}]")
    return found


@pytest.mark.timeout(600)
def test_rehearsal_runs_every_section_without_an_error(tmp_path):
    pytest.importorskip("triton")  # the kernels section runs the Triton kernels under the interpreter
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--rehearse", "--out", str(out)],
                          capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["rehearsal"] is True
    sections = report["sections"]
    assert set(sections) == {"kernels", "engine", "tts", "bench"}
    assert failures(sections) == []
    kernels = sections["kernels"]
    assert kernels["correctness_quick"]["ok"] and kernels["correctness"]["ok"]
    assert all("turbo_us" in row for row in kernels["matmul"])
    assert isinstance(kernels["decode"]["speedup_vs_bf16"], float)
    assert sections["engine"]["bf16/greedy_vs_transformers"]["first_difference"] is None
    for weights in ("bf16", "turboquant_4bit"):
        speak = sections["tts"][weights]["speak"]
        assert speak["chunks"] >= 2 and 25 in speak["chunk_frames"]  # first chunks short, then 25-frame chunks
    assert {run["name"] for run in sections["bench"]["runs"]} >= {"bf16-b1", "turboquant-b64"}
    assert sections["bench"]["worker_path"]["metrics"]["completed"] > 0


def test_without_a_gpu_each_section_says_so(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "tts,bench", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sections = json.loads(out.read_text())["sections"]
    assert all("no CUDA GPU" in sections[name]["error"] for name in ("tts", "bench"))


def test_an_unknown_section_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "kernels,speed", "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown section speed" in proc.stderr
    assert not (tmp_path / "r.json").exists()


HIDDEN_PACKAGES = '''
import importlib.machinery as machinery
HIDDEN = {"mistral_common", "gguf", "sounddevice", "soundfile", "nanotts"}
_find = machinery.PathFinder.find_spec.__func__
def find_spec(cls, name, path=None, target=None):
    return None if name.split(".")[0] in HIDDEN else _find(cls, name, path, target)
machinery.PathFinder.find_spec = classmethod(find_spec)
'''


@pytest.mark.timeout(300)
def test_tts_and_engine_checks_run_without_the_packages_a_gpu_image_may_lack(tmp_path):
    """A GPU machine's image may have no mistral-common, gguf or audio libraries: the checks must not need them."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HIDDEN_PACKAGES)
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--rehearse", "--only", "tts,engine", "--out", str(out)],
                          capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert failures(json.loads(out.read_text())["sections"]) == []
