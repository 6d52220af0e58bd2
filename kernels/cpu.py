"""The CPU path: a small native kernel (kernels/turbo_cpu.cpp) with a chunked torch fallback.

The native library is compiled on first use with the system C++ compiler (`$CXX`, which may
carry arguments such as `ccache g++`, else c++ / g++), `-O3 -march=native -fopenmp`, cached in
the folder `cache_dir_provider()` names by a hash of source, flags and CPU (and of the built
file, checked before each load), and called through ctypes. Its OpenMP calls resolve to the
runtime torch already loaded, so it shares torch's thread pool. Without a compiler, or with
LOCALAI_CPU_KERNEL=torch, the chunked torch path runs instead. Neither path builds a full
dequantized copy of the weight.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from localai.kernels.codebook import LEVELS_4BIT

SOURCE = Path(__file__).with_name("turbo_cpu.cpp")
# batches up to this size use the fused kernel; larger ones dequantize a chunk and call BLAS
FUSED_MAX_BATCH = 32
# rows of the weight dequantized at a time on the BLAS path (bounded scratch, never the whole weight)
CHUNK_ELEMENTS = 1 << 18

_FUNCTIONS = {
    "turbo_vector_width": (ctypes.c_int, []),
    "turbo_matmul_f32": (None, [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]),
    "turbo_dequantize_f32": (None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                    ctypes.c_int64, ctypes.c_void_p]),
    "turbo_rotate_f32": (None, [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]),
    "turbo_linear_f32": (None, [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                ctypes.c_void_p]),
    "dense_matmul_f32": (None, [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                ctypes.c_void_p]),
}


def _compiler() -> list[str] | None:
    """The compiler command: $CXX split like a shell would (`ccache g++`), else the first found."""
    custom = shlex.split(os.environ.get("CXX", ""))
    if custom and shutil.which(custom[0]):
        return [shutil.which(custom[0]), *custom[1:]]
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return [shutil.which(name)]
    return None


def _cpu_fingerprint() -> str:
    """What -march=native depends on: the CPU model and its flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(lines)))


def private_temp_dir() -> Path:
    """This user's folder for kernel builds under the temp dir; refused if anyone else could have
    written into it (a library planted there would be loaded)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"localai-kernels-{uid if uid is not None else 'user'}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or (uid is not None and (info.st_uid != uid or info.st_mode & 0o022)):
        raise PermissionError(f"{folder} is not a private folder of this user")
    return folder


# where compiled libraries are kept; the library that uses these kernels points it at its own
# cache (localai.quant.linear: LOCALAI_HOME/kernels)
cache_dir_provider = private_temp_dir


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def build_library(march: str = "native", cache_dir: Path | None = None) -> Path:
    """Compile turbo_cpu.cpp for `march` (or reuse the cached build); returns the .so path."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    levels = ",".join(f"{v!r}f" for v in LEVELS_4BIT)
    flags = ["-O3", f"-march={march}", "-fopenmp", "-shared", "-fPIC", "-std=c++17", f"-DTURBO_LEVELS={levels}"]
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), " ".join(compiler).encode(),
                                     _cpu_fingerprint().encode()])).hexdigest()[:16]
    stem, command = f"turbo_cpu-{march}-{key}", [*compiler, *flags, str(SOURCE), "-o"]
    if cache_dir is not None:
        return _cached_or_built(Path(cache_dir), stem, command)
    try:
        return _cached_or_built(Path(cache_dir_provider()), stem, command)
    except OSError:
        # the cache cannot be written (a read-only LOCALAI_HOME, a full or foreign folder): build in
        # a private temporary folder rather than run every command on the slower torch path
        return _cached_or_built(private_temp_dir(), stem, command)


def _first_error(output: str) -> str:
    """One line of a compiler's output for a one-line warning: its first error, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors[0] if errors else lines[-1] if lines else "no output")[:300]


def _cached_or_built(folder: Path, stem: str, command: list[str]) -> Path:
    # a cached build is named by its own digest too: a truncated or damaged file (a crash before the
    # data reached the disk, a bad copy) crashes dlopen (SIGBUS) or fails it, so it is rebuilt instead
    for cached in sorted(folder.glob(f"{stem}-*.so")):
        if cached.name == f"{stem}-{_digest(cached)}.so":
            return cached
        with contextlib.suppress(OSError):
            cached.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=stem, suffix=".partial", dir=folder)
    os.close(fd)
    try:
        subprocess.run([*command, partial], check=True, capture_output=True, text=True)
        target = folder / f"{stem}-{_digest(Path(partial))}.so"
        os.replace(partial, target)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"compiling the CPU kernel with {command[0]} failed: {_first_error(exc.stderr)}") from exc
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def load_library(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in _FUNCTIONS.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    lib.vector_width = lib.turbo_vector_width()
    return lib


def _native_for(group_size: int) -> ctypes.CDLL | None:
    """The native library if it handles this group size (multiples of its vector width)."""
    lib = native_library()
    return lib if lib is not None and group_size % lib.vector_width == 0 else None


@functools.lru_cache(maxsize=None)
def native_library(march: str = "native") -> ctypes.CDLL | None:
    """The compiled kernel, or None (fallback) when disabled or when it cannot be built."""
    if os.environ.get("LOCALAI_CPU_KERNEL", "native") == "torch":
        return None
    try:
        return load_library(build_library(march))
    except (RuntimeError, OSError) as exc:
        warnings.warn(f"the native CPU kernel is unavailable, using the slower torch path: {exc}", stacklevel=2)
        return None


# ---- the torch fallback -------------------------------------------------------------------


def _dequantize_rows(codes: torch.Tensor, gains: torch.Tensor, group_size: int) -> torch.Tensor:
    """A slice of rows of the weight: codes [R, Kp/2], gains [R, Kp/G] -> [R, Kp] float32."""
    levels = torch.tensor(LEVELS_4BIT, dtype=torch.float32)
    rows, k_padded = codes.shape[0], codes.shape[1] * 2
    w = torch.stack((levels[(codes & 0x0F).long()], levels[(codes >> 4).long()]), dim=-1)
    w = w.reshape(rows, k_padded // group_size, group_size) * gains.float().unsqueeze(-1)
    return w.reshape(rows, k_padded)


def matmul_torch(x_rot: torch.Tensor, codes: torch.Tensor, gains: torch.Tensor, group_size: int) -> torch.Tensor:
    """Chunked dequantize + matmul in torch ops. x_rot: [M, Kp] -> [M, N] in x_rot's dtype."""
    x = x_rot.float()
    n, k_padded = codes.shape[0], codes.shape[1] * 2
    rows = max(1, CHUNK_ELEMENTS // k_padded)
    out_t = torch.empty(n, x.shape[0], dtype=torch.float32)  # out_t: [N, M]
    for start in range(0, n, rows):
        w = _dequantize_rows(codes[start:start + rows], gains[start:start + rows], group_size)
        torch.mm(w, x.T, out=out_t[start:start + rows])
    return out_t.T.contiguous().to(x_rot.dtype)


# ---- the native path ----------------------------------------------------------------------


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def matmul_native(x_rot: torch.Tensor, codes: torch.Tensor, gains: torch.Tensor, group_size: int,
                  lib: ctypes.CDLL) -> torch.Tensor:
    """The native kernel: fused lookup + dot for small batches, chunked dequantize + BLAS for large ones."""
    x = x_rot.float().contiguous()
    codes, gains = codes.contiguous(), gains.to(torch.float16).contiguous()
    m, k_padded = x.shape
    n = codes.shape[0]
    if m <= FUSED_MAX_BATCH:
        out = torch.empty(m, n, dtype=torch.float32)
        lib.turbo_matmul_f32(_ptr(x), m, k_padded, _ptr(codes), _ptr(gains), n, group_size, _ptr(out))
        return out.to(x_rot.dtype)
    rows = max(1, CHUNK_ELEMENTS // k_padded)
    scratch = torch.empty(min(rows, n), k_padded, dtype=torch.float32)
    out_t = torch.empty(n, m, dtype=torch.float32)  # out_t: [N, M]
    for start in range(0, n, rows):
        count = min(rows, n - start)
        lib.turbo_dequantize_f32(_ptr(codes[start]), _ptr(gains[start]), count, k_padded, group_size, _ptr(scratch))
        torch.mm(scratch[:count], x.T, out=out_t[start:start + count])
    return out_t.T.contiguous().to(x_rot.dtype)


def turbo_matmul(x_rot: torch.Tensor, codes: torch.Tensor, gains: torch.Tensor, group_size: int) -> torch.Tensor:
    """y = x_rot @ Wr.T on the CPU, by the fastest path available. x_rot: [M, Kp] -> [M, N]."""
    lib = _native_for(group_size)
    if lib is None:
        return matmul_torch(x_rot, codes, gains, group_size)
    return matmul_native(x_rot, codes, gains, group_size, lib)


def linear(x: torch.Tensor, signs: torch.Tensor, block: int, codes: torch.Tensor, gains: torch.Tensor,
           group_size: int) -> torch.Tensor:
    """rotate + matmul: x [M, K] -> [M, N] in x's dtype; one native call for small batches."""
    lib = _native_for(group_size)
    if lib is None or x.shape[0] > FUSED_MAX_BATCH or gains.dtype != torch.float16:
        # rotated in float32 like the fused path: a batch's answer must not depend on its size
        return turbo_matmul(rotate(x.float(), signs, block), codes, gains, group_size).to(x.dtype)
    xf = x.float().contiguous()
    signs, codes, gains = signs.float().contiguous(), codes.contiguous(), gains.contiguous()
    out = torch.empty(x.shape[0], codes.shape[0], dtype=torch.float32)
    lib.turbo_linear_f32(_ptr(xf), xf.shape[0], xf.shape[1], _ptr(signs), signs.shape[0], block, _ptr(codes),
                         _ptr(gains), codes.shape[0], group_size, _ptr(out))
    return out.to(x.dtype)


def rotate(x: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """Random-sign block Hadamard rotation of the rows of x: [..., K] -> [..., Kp], x's dtype."""
    lib = native_library()
    if lib is None:
        from localai.kernels.hadamard import rotate as rotate_torch

        return rotate_torch(x, signs, block)
    k, k_padded = x.shape[-1], signs.shape[0]
    flat = x.reshape(-1, k).float().contiguous()
    signs = signs.float().contiguous()
    out = torch.empty(flat.shape[0], k_padded, dtype=torch.float32)
    lib.turbo_rotate_f32(_ptr(flat), flat.shape[0], k, _ptr(signs), k_padded, block, _ptr(out))
    return out.reshape(*x.shape[:-1], k_padded).to(x.dtype)


def dense_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """x [M, K] @ weight [N, K].T for fp32 CPU tensors with few rows (weight streamed once, close
    to the memory bandwidth); None when the native library is unavailable."""
    lib = native_library()
    if lib is None:
        return None
    x = x.contiguous()
    out = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
    lib.dense_matmul_f32(_ptr(x), x.shape[0], x.shape[1], _ptr(weight), weight.shape[0], _ptr(out))
    return out

