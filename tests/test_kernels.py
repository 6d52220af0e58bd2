"""The 4-bit matmul paths against the plain-torch reference: native CPU kernel (and its AVX2 and
scalar builds), the torch fallback, the Triton kernels under the interpreter, and the ops."""

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from localai.kernels import cpu, ops, reference
from localai.quant.codebook import LEVELS_4BIT, pack_codes
from localai.quant.hadamard import random_signs, rotate
from localai.quant.turboquant import dequantize_rotated, quantize_weight

# (N, K, group): SmolLM2's 576 and 1536 inputs, an odd N, K=100 padded to a 128 block
SHAPES = [(97, 576, 64), (64, 1536, 64), (33, 100, 32), (192, 1024, 128)]
BATCHES = [1, 2, 3, 17, 40]  # 1-3: weight rows four at a time; 40 takes the chunked dequantize + BLAS path


@functools.lru_cache(maxsize=None)
def packed(n, k, group, seed=1):
    """Data-free TurboQuant of a random [n, k] weight (cached: tests only read it)."""
    torch.manual_seed(seed)
    return quantize_weight(torch.randn(n, k), group, seed=seed)


def rel_err(got, ref):
    return ((got.float() - ref.float()).norm() / ref.float().norm()).item()


def test_reference_follows_the_format():
    codes = torch.tensor([[0, 15, 7, 8], [3, 3, 12, 1]], dtype=torch.uint8)  # [N=2, Kp=4]
    gains = torch.tensor([[2.0, 0.5], [1.0, -1.0]], dtype=torch.float16)  # group of 2
    w = reference.dequantize(pack_codes(codes), gains, 2)
    levels = torch.tensor(LEVELS_4BIT)
    expected = levels[codes.long()] * torch.tensor([[2.0, 2.0, 0.5, 0.5], [1.0, 1.0, -1.0, -1.0]])
    torch.testing.assert_close(w, expected)


def test_reference_matches_the_quantizer():
    p = packed(97, 576, 64)
    torch.testing.assert_close(reference.dequantize(p.codes, p.gains, 64), dequantize_rotated(p))


@pytest.mark.parametrize("bad", [
    dict(codes=torch.zeros(4, 8, dtype=torch.int32), gains=torch.zeros(4, 1, dtype=torch.float16), group=16),
    dict(codes=torch.zeros(4, 8, dtype=torch.uint8), gains=torch.zeros(4, 1, dtype=torch.float16), group=12),
    dict(codes=torch.zeros(4, 8, dtype=torch.uint8), gains=torch.zeros(4, 2, dtype=torch.float16), group=16),
])
def test_reference_rejects_bad_packing(bad):
    with pytest.raises(ValueError):
        reference.dequantize(bad["codes"], bad["gains"], bad["group"])


needs_compiler = pytest.mark.skipif(cpu.native_library() is None, reason="no C++ compiler for the native kernel")


@needs_compiler
@pytest.mark.parametrize("n,k,group", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_cpu_kernel_matches_reference(n, k, group, dtype):
    p = packed(n, k, group)
    lib = cpu.native_library()
    for m in BATCHES:
        x = torch.randn(m, p.layout.k_padded).to(dtype)
        got = cpu.matmul_native(x, p.codes, p.gains, group, lib)
        ref = reference.turbo_matmul(x.float(), p.codes, p.gains, group)
        assert got.dtype == dtype and got.shape == (m, n)
        assert rel_err(got, ref) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("n,k,group", SHAPES[:3])
def test_torch_fallback_matches_reference(n, k, group):
    p = packed(n, k, group)
    for m in (1, 17):
        x = torch.randn(m, p.layout.k_padded)
        assert rel_err(cpu.matmul_torch(x, p.codes, p.gains, group), reference.turbo_matmul(x, p.codes, p.gains, group)) < 1e-5


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("g++") is None,
                    reason="portable x86 builds need g++ on x86-64")
@pytest.mark.parametrize("march,width", [("x86-64-v3", 16), ("x86-64", 4)])  # weights per step
def test_portable_builds_match_reference(tmp_path, march, width):
    lib = cpu.load_library(cpu.build_library(march, cache_dir=tmp_path))
    assert lib.turbo_vector_width() == width
    for n, k, group in SHAPES[:3]:
        p = packed(n, k, group)
        for m in (1, 2, 3, 5):  # weight rows four at a time (and a tail), then activation rows
            x = torch.randn(m, p.layout.k_padded)
            got = cpu.matmul_native(x, p.codes, p.gains, group, lib)
            assert rel_err(got, reference.turbo_matmul(x, p.codes, p.gains, group)) < 1e-5
        x_in = torch.randn(3, k)
        signs = random_signs(p.layout.k_padded, 4)
        torch.testing.assert_close(cpu.rotate(x_in, signs, p.layout.block), rotate(x_in, signs, p.layout.block))


def test_group_sizes_the_vector_path_cannot_take_fall_back_to_torch():
    p = packed(24, 64, 8)  # 8 is not a multiple of the AVX-512 / AVX2 width
    x = torch.randn(2, 64)
    signs = random_signs(64, 1)
    ref = reference.turbo_matmul(rotate(x, signs, 64), p.codes, p.gains, 8)
    assert rel_err(cpu.linear(x, signs, 64, p.codes, p.gains, 8), ref) < 1e-5


@needs_compiler
@pytest.mark.parametrize("m", [1, 5])
def test_fused_rotate_and_matmul_matches_the_two_steps(m):
    p = packed(97, 576, 64)
    x = torch.randn(m, 576)
    signs = random_signs(576, 5)
    two_steps = reference.turbo_matmul(rotate(x, signs, 64), p.codes, p.gains, 64)
    assert rel_err(cpu.linear(x, signs, 64, p.codes, p.gains, 64), two_steps) < 1e-5
    assert cpu.linear(x.bfloat16(), signs, 64, p.codes, p.gains, 64).dtype == torch.bfloat16


def test_build_is_cached_and_atomic(tmp_path):
    first = cpu.build_library("native", cache_dir=tmp_path)
    assert cpu.build_library("native", cache_dir=tmp_path) == first
    assert [f.name for f in tmp_path.iterdir()] == [first.name]  # no partial files left behind


@needs_compiler
def test_a_truncated_cached_build_is_rebuilt(tmp_path):
    """A cached library cut short (a crash before it reached the disk) made dlopen fail, or die of
    SIGBUS, on every run; it is rebuilt instead."""
    good = cpu.build_library("native", cache_dir=tmp_path).read_bytes()
    [cached] = tmp_path.iterdir()
    cached.write_bytes(good[: len(good) // 2])
    again = cpu.build_library("native", cache_dir=tmp_path)
    assert len(again.read_bytes()) == len(good)
    assert cpu.load_library(again).turbo_vector_width() > 0
    assert [f.name for f in tmp_path.iterdir()] == [again.name]




def test_a_failed_compile_is_told_in_one_line(tmp_path, monkeypatch):
    """The warning carried the compiler's last 500 characters, several lines of them, on stderr."""
    compiler = tmp_path / "cxx"
    compiler.write_text("#!/bin/sh\necho 'In file included from turbo_cpu.cpp:3:' >&2\n"
                        "echo 'x.h:1:10: fatal error: omp.h: No such file or directory' >&2\n"
                        "echo '    1 | #include <omp.h>' >&2\necho 'compilation terminated.' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setattr(cpu, "_compiler", lambda: [str(compiler)])
    with pytest.raises(RuntimeError) as failed:
        cpu.build_library("native", cache_dir=tmp_path / "cache")
    assert str(failed.value) == (f"compiling the CPU kernel with {compiler} failed: "
                                 "x.h:1:10: fatal error: omp.h: No such file or directory")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_the_default_cache_is_private(tmp_path, monkeypatch):
    """It was one shared temp folder, writable by whoever made it first: another user could leave a
    library there for everyone's next build to load."""
    code = "from localai.kernels import cpu; print(cpu.cache_dir_provider())"  # without localai's own cache
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, TMPDIR=str(tmp_path)))
    folder = Path(result.stdout.strip())
    assert folder.parent == tmp_path and folder.stat().st_uid == os.getuid()
    assert folder.stat().st_mode & 0o077 == 0
    folder.chmod(0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(PermissionError):
        cpu.private_temp_dir()


def test_cxx_may_carry_arguments(tmp_path, monkeypatch):
    """CXX="ccache g++" (a launcher and its compiler) was not found on PATH as one name and was
    passed over for c++ without a word."""
    launcher = tmp_path / "launcher"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    monkeypatch.setenv("CXX", f"{launcher} g++ -Wall")
    assert cpu._compiler() == [str(launcher), "g++", "-Wall"]

@needs_compiler
def test_an_unwritable_cache_builds_in_a_private_temp_folder(tmp_path, monkeypatch):
    """A read-only LOCALAI_HOME (here: a folder that cannot be created) ran every command on the
    slower torch path."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(cpu, "cache_dir_provider", lambda: tmp_path / "a-file" / "kernels")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    built = cpu.build_library("native")
    assert built.parent == cpu.private_temp_dir() and built.parent.parent == tmp_path / "tmp"
    assert cpu.load_library(built).turbo_vector_width() > 0
    if hasattr(os, "getuid"):
        assert built.parent.stat().st_mode & 0o077 == 0

@needs_compiler
@pytest.mark.parametrize("k", [576, 1536, 100])
def test_native_rotation_matches_torch(k):
    block = 64 if k == 576 else 128
    k_padded = -(-k // block) * block
    signs = random_signs(k_padded, 9)
    x = torch.randn(2, 3, k)  # any leading dims
    torch.testing.assert_close(cpu.rotate(x, signs, block), rotate(x, signs, block), rtol=1e-5, atol=1e-5)
    assert cpu.rotate(x.bfloat16(), signs, block).dtype == torch.bfloat16


def test_triton_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = Path(__file__).with_name("interpret_triton.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout)
    # the cases, then every GPU tile of the GEMV, of the tiled kernel (bf16) and of its float32 form
    assert len(errors) == 23 + 8 + 3 + 3
    for case, err in errors.items():
        limit = 1e-5 if ("float32" in case or "split" in case or "offset" in case or "rotate" in case) else 1e-2
        assert err < limit, (case, err)


def test_ops_are_registered_and_traceable():
    p = packed(33, 100, 32)
    x = torch.randn(4, 100)
    signs = random_signs(p.layout.k_padded, 2)
    x_rot = torch.ops.localai.hadamard_rotate(x, signs, p.layout.block)
    y = torch.ops.localai.turbo_matmul(x_rot, p.codes, p.gains, 32)
    torch.testing.assert_close(y, reference.turbo_matmul(rotate(x, signs, p.layout.block), p.codes, p.gains, 32),
                               rtol=1e-5, atol=1e-5)
    torch.library.opcheck(ops.turbo_matmul, (x_rot, p.codes, p.gains, 32))
    torch.library.opcheck(ops.hadamard_rotate, (x, signs, p.layout.block))


def test_eager_shortcut_equals_the_op():
    p = packed(64, 1536, 64)
    x = torch.randn(3, 1536)
    signs = random_signs(p.layout.k_padded, 2)
    direct = ops.turbo_linear(x, signs, p.layout.block, p.codes, p.gains, 64)
    through_op = ops.turbo_matmul(ops.hadamard_rotate(x, signs, p.layout.block), p.codes, p.gains, 64)
    torch.testing.assert_close(direct, through_op)


def test_bf16_answers_do_not_depend_on_the_batch_size():
    """Past the fused path's batch limit the rotation also runs in float32, so a row's bf16 output
    is the same alone and inside a large batch."""
    from localai.kernels import cpu
    from localai.quant.hadamard import random_signs
    from localai.quant.turboquant import quantize_weight

    packed = quantize_weight(torch.randn(48, 256), 64, seed=3)
    signs = random_signs(packed.layout.k_padded, 3)
    x = torch.randn(cpu.FUSED_MAX_BATCH + 8, 256).to(torch.bfloat16)
    alone = cpu.linear(x[:1], signs, packed.layout.block, packed.codes, packed.gains, 64)
    batched = cpu.linear(x, signs, packed.layout.block, packed.codes, packed.gains, 64)
    assert torch.equal(batched[:1], alone)


@pytest.mark.parametrize("hip, interpret, shuffle", [(None, False, True), ("6.2", False, False), (None, True, False)])
def test_gemv_looks_levels_up_by_shuffle_only_with_ptx_and_warps(hip, interpret, shuffle):
    """The warp-shuffle lookup is inline PTX: a ROCm build of torch (its GPUs are "cuda" too) and the
    interpreter read the table from memory."""
    pytest.importorskip("triton")
    code = ("import torch; torch.version.hip = %r\n"
            "from localai.kernels import triton_matmul\n"
            "print(triton_matmul.SHUFFLE_LOOKUP)" % hip)
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(shuffle)
