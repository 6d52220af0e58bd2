"""Compile the Triton kernels for NVIDIA GPUs ahead of time, on a machine without one.

Every variant a GPU may build is compiled to a cubin with Triton's own toolchain (ptxas):
each autotuning tile, each activation dtype, group sizes 32/64/128, split-K on and off, and
the rotation for Hadamard blocks 32/64/128. For each, the report gives registers per thread,
local memory (register spills), shared memory and how many of its global loads are vector
loads; for the matmul kernels also the instructions their decode loop issues per weight (from
the SASS; the tiled kernel's serve BLOCK_M activation rows at once), which bounds their speed
where memory does not. A config that spills or needs more shared memory than the card has is flagged: the
autotuner passes over it (too slow, or refused at launch). What fails is a variant that does not
compile, or a use (kernel, group, split, dtype, rows) none of whose configs is clean: that is
what a user's GPU would run.

    python scripts/compile_kernels.py                        # sm_75 sm_86 sm_89 sm_90 sm_120, a table
    python scripts/compile_kernels.py --arch 89 --json       # one JSON object on stdout
    python scripts/compile_kernels.py --arch 90 --kernel gemv --group 64

Exits 1 when something fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be defined for compilation
# Triton 3.9 announces a coming change of default once per process; this compiles with the
# default a GPU's first launch would use
warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION")

# the cards localai is for (RTX 20 to 50) and the data-centre cards it is checked on
ARCHS = {75: "RTX 20xx", 80: "A100", 86: "RTX 30xx", 89: "RTX 40xx", 90: "H100", 120: "RTX 50xx"}
DEFAULT_ARCHS = (75, 86, 89, 90, 120)
# the most shared memory one program may use (opt-in), bytes
SHARED_LIMIT = {75: 65536, 80: 166912, 86: 101376, 89: 101376, 90: 232448, 120: 101376}
GROUPS = (32, 64, 128)
BLOCKS = (32, 64, 128)
DTYPES = ("bf16", "fp16", "fp32")
# a weight shape that gives every argument the divisibility a real layer's gives (K = 4096)
N, K = 4096, 4096


@dataclass
class Variant:
    use: str  # the kernel and what the call brings: "dot group=64 split=1 x=bf16 block_m=16"
    config: str  # the autotuning config: "BLOCK_N=32 warps=4 stages=3"
    fn: object = field(repr=False)  # the JIT function
    signature: dict = field(repr=False)
    constants: dict = field(repr=False)
    attrs: dict = field(repr=False)
    options: dict = field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.use} | {self.config}"


def _words(params: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in params.items())


def _jit(kernel):
    """The JIT function under an autotuner, or the kernel itself."""
    from triton.runtime.jit import JITFunction

    return kernel if isinstance(kernel, JITFunction) else kernel.fn


def _specialize(kernel_fn, args: dict, constexprs: dict) -> tuple[dict, dict, dict]:
    """Signature and attributes as Triton's launcher derives them from real arguments:
    pointers and integers divisible by 16 are marked so, an integer equal to 1 becomes a constant."""
    signature, attrs, constants = {}, {}, dict(constexprs)
    for index, name in enumerate(kernel_fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        value = args[name]
        if isinstance(value, str):  # a pointer, given as its element type
            signature[name] = "*" + value
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:
            signature[name] = "constexpr"
            constants[name] = 1
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constants, attrs


def variants(kernels: set[str], groups: tuple[int, ...], dtypes: tuple[str, ...] = DTYPES) -> list[Variant]:
    """Every (kernel, config) a GPU may compile: each config an autotuned kernel times (after its
    pruning), each activation dtype it serves, each group size, split-K on and off; each rotation block."""
    import triton

    from localai.kernels import triton_matmul as tm

    found = []

    def add(kernel: str, params: dict, args: dict, constexprs: dict, config) -> None:
        fn = _jit(tm.AUTOTUNED[kernel] if kernel in tm.AUTOTUNED else tm._rotate_kernel)
        options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
        tile = _words({**config.kwargs, "warps": config.num_warps, "stages": config.num_stages})
        found.append(Variant(f"{kernel} {_words(params)}", tile, fn,
                             *_specialize(fn, args, {**constexprs, **config.kwargs}), options))

    words = {"bf16": ("i32", 0), "fp16": ("i32", 1), "fp32": ("i64", 2)}
    for group in groups:
        for split in (1, 2):
            common = dict(codes_ptr="u8", gains_ptr="fp16", lut_ptr="fp32", N=N, K=K, KB=K // 2)
            for dtype in dtypes if "gemv" in kernels else ():
                word, kind = words[dtype]
                args = dict(common, codes_ptr="i32", xw_ptr=word, out_ptr="fp32" if split > 1 else dtype,
                            stride_xm=K // 2, stride_om=N, KW=K // 8)
                for config in tm.gemv_configs_for(tm.AUTOTUNED["gemv"].configs, group):
                    add("gemv", dict(group=group, split=split, x=dtype), args,
                        dict(GROUP=group, SPLIT_K=split, X_KIND=kind, SHUFFLE=True), config)
            for dtype in dtypes if "dot" in kernels else ():
                kernel = "dot_f32" if dtype == "fp32" else "dot"
                for block_m in (16, 32, 64):
                    m = block_m + 16  # rows past the block: the row mask is live
                    args = dict(common, x2_ptr=dtype, out_ptr="fp32" if split > 1 else dtype, M=m,
                                stride_xs=m * K // 2, stride_xm=K // 2, stride_om=N)
                    for config in tm.AUTOTUNED[kernel].configs:
                        add(kernel, dict(group=group, split=split, x=dtype, block_m=block_m), args,
                            dict(GROUP=group, SPLIT_K=split, BLOCK_M=block_m, F32_DOT=dtype == "fp32",
                                 SHUFFLE=dtype != "fp32"),
                            config)
    for block in BLOCKS if "rotate" in kernels else ():
        for dtype in dtypes:
            chunks = max(1, min(1024 // block, K // block))
            args = dict(x_ptr=dtype, signs_ptr="fp32", out_ptr=dtype, K=K - 8, KP=K, stride_x=K - 8, stride_o=K,
                        scale=block ** -0.5)
            add("rotate", dict(block=block, x=dtype), args,
                dict(BLOCK=block, LOG_BLOCK=block.bit_length() - 1, CHUNKS=chunks),
                triton.Config({}, num_warps=4, num_stages=3))  # what a plain @triton.jit launch compiles with
    return found


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def _dump(cubin: bytes, flag: str) -> str:
    """What cuobjdump `flag` prints about a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        return subprocess.run([_cuobjdump(), flag, handle.name], capture_output=True, text=True, check=True).stdout


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread and local memory (register spills) of a cubin, as ptxas laid it out."""
    text = _dump(cubin, "--dump-resource-usage")
    usage = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text))
    return {"registers": int(usage["REG"]), "local_bytes": int(usage["LOCAL"]) + int(usage["STACK"])}


def loop_instructions(cubin: bytes) -> int:
    """Instructions in the body of the cubin's longest loop (from a backward branch's target to the
    branch), from its SASS: what one iteration issues per thread."""
    sass = _dump(cubin, "--dump-sass")
    addresses = [(int(address, 16), text) for address, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    longest = 0
    for address, text in addresses:
        branch = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) < address:
            start = int(branch.group(1), 16)
            longest = max(longest, sum(1 for at, _ in addresses if start <= at <= address))
    return longest


def global_loads(ptx: str) -> dict:
    """How many global loads in the PTX are vector loads (v2, v4) and how many scalar."""
    loads = re.findall(r"ld\.global(?:\.[a-z0-9]+)*?(\.v[248])?\.[bsuf]\d+", ptx)
    return {"vector_loads": sum(1 for vector in loads if vector), "scalar_loads": sum(1 for vector in loads if not vector)}


def _source(variant: Variant):
    """Triton's compiler input for the variant, in the form the installed Triton takes."""
    from triton.compiler import ASTSource

    try:
        return ASTSource(fn=variant.fn, signature=variant.signature, constexprs=variant.constants, attrs=variant.attrs)
    except TypeError:  # Triton 3.2 (torch 2.6): every non-constexpr argument typed, attributes as hints
        from triton.compiler.compiler import AttrsDescriptor

        params = [param for param in variant.fn.params if not param.is_constexpr]
        ones = {param.num for param in params if variant.signature[param.name] == "constexpr"}
        signature = {param.name: "i32" if param.num in ones else variant.signature[param.name] for param in params}
        hints = {**{index: 16 for (index,) in variant.attrs}, **{index: 1 for index in ones}}
        return ASTSource(variant.fn, signature, variant.constants, AttrsDescriptor.from_hints(hints))


def compile_variant(variant: Variant, arch: int) -> dict:
    """Compile one variant for sm_<arch>: its resources; "error" when it does not compile,
    "warning" when it spills or needs more shared memory than the card has."""
    import triton
    from triton.backends.compiler import GPUTarget

    source = _source(variant)
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=variant.options)
    except Exception as exc:  # report the variant that does not compile, go on with the rest
        lines = str(exc).strip().splitlines()
        return {"error": f"does not compile: {type(exc).__name__}: {lines[-1] if lines else ''}"}
    result = {**resource_usage(compiled.asm["cubin"]), "shared_bytes": compiled.metadata.shared,
              **global_loads(compiled.asm["ptx"])}
    if not variant.use.startswith("rotate"):  # the decode loop's cost, what bounds it where memory does not
        result["instructions_per_weight"] = round(
            loop_instructions(compiled.asm["cubin"]) * 32 * variant.options["num_warps"] / _weights_per_step(variant), 2)
    problems = []
    if result["local_bytes"]:
        problems.append(f"spills {result['local_bytes']} bytes to local memory")
    if result["shared_bytes"] > SHARED_LIMIT[arch]:
        problems.append(f"needs {result['shared_bytes']} bytes of shared memory, sm_{arch} has {SHARED_LIMIT[arch]}")
    if problems:
        result["warning"] = "; ".join(problems)
    return result


def _weights_per_step(variant: Variant) -> int:
    """Weights one iteration of a matmul kernel's loop decodes: BLOCK_N rows times BLOCK_G groups
    (GEMV), or times a group of up to 64 weights (tiled, for BLOCK_M activation rows at once)."""
    group, rows = variant.constants["GROUP"], variant.constants["BLOCK_N"]
    return rows * (variant.constants["BLOCK_G"] * group if variant.use.startswith("gemv") else min(group, 64))


def failures(results: dict[str, dict]) -> list[str]:
    """What a GPU would trip on, from one architecture's {variant name: result}: each variant
    that does not compile, and each use none of whose configs compiles cleanly."""
    found = [f"{name}: {result['error']}" for name, result in results.items() if "error" in result]
    clean: dict[str, bool] = {}
    for name, result in results.items():
        use = name.split(" | ")[0]
        clean[use] = clean.get(use, False) or not ("error" in result or "warning" in result)
    found += [f"{use}: no config compiles cleanly" for use, ok in clean.items() if not ok]
    return found


_worker_variants: list[Variant] = []


def _start_worker(*selection) -> None:
    _worker_variants[:] = variants(*selection)


def _compile_in_worker(arch: int, index: int) -> dict:
    return compile_variant(_worker_variants[index], arch)


def compile_all(archs: list[int], selection: tuple, jobs: int):
    """Yield (arch, variant name, result) for every variant of `selection` (the arguments of
    `variants`) on every architecture, compiling in `jobs` processes, in the table's order."""
    from concurrent.futures import ProcessPoolExecutor

    names = [variant.name for variant in variants(*selection)]
    with ProcessPoolExecutor(jobs, initializer=_start_worker, initargs=selection) as pool:
        futures = [(arch, name, pool.submit(_compile_in_worker, arch, index))
                   for arch in archs for index, name in enumerate(names)]
        for arch, name, future in futures:
            yield arch, name, future.result()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=",".join(map(str, DEFAULT_ARCHS)),
                        help=f"compute capabilities, comma-separated (known: {', '.join(map(str, ARCHS))})")
    parser.add_argument("--kernel", default="gemv,dot,rotate", help="gemv, dot, rotate, comma-separated")
    parser.add_argument("--group", default=",".join(map(str, GROUPS)), help="group sizes, comma-separated")
    parser.add_argument("--dtype", default=",".join(DTYPES), help="activation dtypes, comma-separated")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes (default: all cores)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of a table")
    args = parser.parse_args()
    try:
        archs = [int(arch) for arch in args.arch.split(",")]
        groups = tuple(int(group) for group in args.group.split(","))
    except ValueError:
        parser.error("--arch and --group take comma-separated integers")
    kernels, dtypes = set(args.kernel.split(",")), tuple(args.dtype.split(","))
    if unknown := [arch for arch in archs if arch not in ARCHS]:
        parser.error(f"unknown architecture {unknown[0]} (known: {', '.join(map(str, ARCHS))})")
    if unknown := kernels - {"gemv", "dot", "rotate"}:
        parser.error(f"unknown kernel {sorted(unknown)[0]} (kernels: gemv, dot, rotate)")
    if unknown := [dtype for dtype in dtypes if dtype not in DTYPES]:
        parser.error(f"unknown dtype {unknown[0]} (dtypes: {', '.join(DTYPES)})")
    if bad := [group for group in groups if group < 32 or group & (group - 1)]:
        parser.error(f"group size {bad[0]} has no Triton kernel (powers of two from 32)")

    import triton

    report = {"triton": triton.__version__, "archs": {f"sm_{arch}": {} for arch in archs}}
    for arch, name, result in compile_all(archs, (kernels, groups, dtypes), max(1, args.jobs)):
        report["archs"][f"sm_{arch}"][name] = result
        if not args.json:
            problem = result.get("error") or result.get("warning")
            print(f"sm_{arch:<4} {name:<76} " + (f"! {problem}" if problem else
                  f"{result['registers']:>3} regs  {result['shared_bytes']:>6} B shared  "
                  f"{result['vector_loads']:>2} vector / {result['scalar_loads']:>2} scalar loads"
                  + (f"  {result['instructions_per_weight']:.2f} instr/weight" if "instructions_per_weight" in result
                     else "")), flush=True)
    report["failures"] = [f"{arch} {failure}" for arch, results in report["archs"].items()
                          for failure in failures(results)]
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        total = sum(len(results) for results in report["archs"].values())
        flagged = sum("warning" in result for results in report["archs"].values() for result in results.values())
        print(f"{total} variants compiled, {flagged} flagged (!), {len(report['failures'])} failures", file=sys.stderr)
        for failure in report["failures"]:
            print(f"FAILED {failure}", file=sys.stderr)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
