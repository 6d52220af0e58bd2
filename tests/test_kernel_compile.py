"""The Triton kernels compile for NVIDIA GPUs without spilling registers, checked on a machine
without a GPU: scripts/compile_kernels.py compiles them ahead of time with Triton's own ptxas."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compile_kernels.py"


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def ptxas_available() -> bool:
    triton = pytest.importorskip("triton")
    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


def test_every_kernel_use_has_a_clean_config_on_rtx_40_and_50():
    if not ptxas_available():
        pytest.skip("this Triton build has no NVIDIA toolchain")
    # bf16 stands for fp16 (the same code with another element type); the default group size
    result = run_script("--arch", "89,120", "--group", "64", "--dtype", "bf16,fp32", "--json")
    report = json.loads(result.stdout)
    assert report["failures"] == [] and result.returncode == 0, report["failures"] or result.stderr[-2000:]
    for arch in ("sm_89", "sm_120"):
        variants = report["archs"][arch]
        assert {name.split()[0] for name in variants} == {"gemv", "dot", "dot_f32", "rotate"}
        assert not [name for name, variant in variants.items() if "error" in variant]
        # the GEMV reads code words and activation pair words with vector loads
        gemv = {name: variant for name, variant in variants.items() if name.startswith("gemv")}
        assert all(variant["vector_loads"] > 0 for variant in gemv.values())
        # its decode loop: a shuffle, a shift and an FMA per weight, plus the shared work. The best
        # tile for each activation dtype stays under 5 instructions per weight (the byte-table
        # lookup through global memory it replaced took 7.8 to 8.9)
        for dtype in ("bf16", "fp32"):
            best = min(variant["instructions_per_weight"] for name, variant in gemv.items() if f"x={dtype}" in name)
            assert 3 < best < 5, (arch, dtype, best)
        # the tiled kernel decodes by shuffle too (bf16/fp16): its best tile for 16 activation rows
        # (the byte table in memory took 11.3 per weight on sm_90)
        best = min(variant["instructions_per_weight"] for name, variant in variants.items()
                   if name.startswith("dot ") and "block_m=16 " in name)
        assert 4 < best < 8, (arch, best)


def test_a_use_without_a_clean_config_fails(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the script drops it on import: restored after
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import compile_kernels
    finally:
        sys.path.remove(str(SCRIPT.parent))
    clean = {"registers": 40, "local_bytes": 0, "shared_bytes": 0}
    results = {
        "dot group=64 x=bf16 | BLOCK_N=32": clean,
        "dot group=64 x=bf16 | BLOCK_N=64": {**clean, "warning": "spills 8 bytes to local memory"},
        "dot group=128 x=bf16 | BLOCK_N=64": {**clean, "warning": "needs 102400 bytes of shared memory"},
        "gemv group=64 x=bf16 | BLOCK_N=4": {"error": "does not compile: CompilationError: bad"},
    }
    assert compile_kernels.failures(results) == [
        "gemv group=64 x=bf16 | BLOCK_N=4: does not compile: CompilationError: bad",
        "dot group=128 x=bf16: no config compiles cleanly",
        "gemv group=64 x=bf16: no config compiles cleanly",
    ]


@pytest.mark.parametrize("args, message", [
    (("--arch", "61"), "unknown architecture 61"),
    (("--arch", "sm_89"), "comma-separated integers"),
    (("--kernel", "gemm"), "unknown kernel gemm"),
    (("--group", "48"), "group size 48 has no Triton kernel"),
    (("--dtype", "fp8"), "unknown dtype fp8"),
])
def test_bad_options_are_refused(args, message):
    result = run_script(*args, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_gemv_tiles_timed_for_a_group_size_decode_at_most_512_bytes_per_row_step():
    pytest.importorskip("triton")
    from localai.kernels import triton_matmul as tm

    configs = [tm.gemv_config(*tile) for tile in tm.GEMV_TILES]
    assert tm.gemv_configs_for(configs, 64) == configs  # the default group keeps every tile
    for group in (128, 256):
        kept = tm.gemv_configs_for(configs, group)
        assert kept and all(config.kwargs["BLOCK_G"] * group // 2 <= 512 for config in kept)
        assert len(kept) < len(configs)
        assert tm._prune_gemv(configs, {}, GROUP=group) == kept  # what the autotuner calls
        assert tm._prune_gemv(configs, {"GROUP": group}) == kept  # GROUP passed by position
    # a group too large for any tile keeps the one with the shortest step
    assert [config.kwargs["BLOCK_G"] for config in tm.gemv_configs_for(configs, 2048)] == [1]
