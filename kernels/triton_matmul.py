"""Triton kernels for CUDA: the TurboQuant matmul and the activation rotation.

Both matmul forms fuse unpacking, the codebook lookup, the gain and the dot product, and
read every packed byte once per program:
- GEMV (a few activation rows): each program owns BLOCK_N weight rows and one activation
  row, walks K a few groups at a time (the next tile is loaded while the current one is
  decoded), reduces each group and scales it by the group's gain. It reads the codes as 32-bit
  words (eight codes each) and the activations as words holding the pair (2j, 2j+1), four pair
  words per code word. A level is looked up with a warp shuffle: each lane holds one entry of
  the level table in a register, and the shuffle reads the code from bits 0-4 of the shifted
  word, so a weight costs a shift, a shuffle and an FMA (a table in memory cost a 64-bit address
  and a load besides).
- tiled (more rows): K steps of up to 64 weights (one group, or a slice of a larger one); the
  [BLOCK_N, step/2] byte tile becomes two bf16/fp16 tiles (even and odd columns, levels by the
  same shuffle, gain applied) that meet the matching activation columns in tl.dot. The wrapper
  splits the activations into even and odd columns once per call. float32 activations keep the
  table in memory: with shuffled levels in registers their largest tiles spill.
Split-K (partial sums added atomically into float32) only when N alone gives too few
programs; it is a function of the weight shape, like the autotuning key.
Set TRITON_INTERPRET=1 before importing this module to run it on the CPU (tests); the kernels
then read the level table from memory, as they do on ROCm.
"""

from __future__ import annotations

import functools
import os
import threading

import torch
import triton
import triton.language as tl

from localai.kernels.codebook import LEVELS_4BIT

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Triton's autotuner keeps the arguments of the call it is tuning on the shared kernel object:
# a launch from another thread meanwhile (chat --speak decodes text and speech at once) would
# swap them under it, so the autotuned launches take turns
_AUTOTUNED_LAUNCH = threading.Lock()
# activation rows up to this count use the GEMV kernel; more use the tiled tl.dot kernel
GEMV_MAX_ROWS = 4
# how activations travel as pair words: bf16 and fp16 pairs in int32, fp32 pairs in int64
_PAIR_WORDS = {torch.bfloat16: (0, torch.int32), torch.float16: (1, torch.int32), torch.float32: (2, torch.int64)}


@functools.lru_cache(maxsize=None)
def level_table(device: str) -> torch.Tensor:
    """The 16 levels twice, float32 [32]: one entry per lane of a warp (the shuffle lookup)."""
    return torch.tensor(LEVELS_4BIT * 2, dtype=torch.float32, device=device)


# the matmul kernels look levels up by warp shuffle (inline PTX); the interpreter has no warps, and
# AMD GPUs (ROCm builds of torch, also device "cuda") no PTX: there they read the table from memory
SHUFFLE_LOOKUP = not INTERPRET and torch.version.hip is None


@triton.jit
def _lane_table(lut_ptr, SHUFFLE: tl.constexpr):
    """What _level looks levels up in. By shuffle: entry l of the 32-entry table in lane l, as a
    scalar, which every thread computes for itself: a tensor could be laid out over the lanes
    differently from the codes it meets, and a layout conversion would move entries between lanes.
    From memory: the table itself."""
    if SHUFFLE:
        lane = tl.inline_asm_elementwise("mov.u32 $0, %laneid;", "=r,r", [tl.program_id(0)], dtype=tl.int32,
                                         is_pure=True, pack=1)
        return tl.load(lut_ptr + lane).to(tl.int32, bitcast=True)
    else:
        return lut_ptr


@triton.jit
def _level(table, index, SHUFFLE: tl.constexpr):
    """The level of each 4-bit code in bits 0-3 of `index`. By shuffle: fetched from the lane that
    holds it; the shuffle reads bits 0-4 only, and lanes 16-31 repeat lanes 0-15, so higher bits need
    no mask. From memory: the same entry, index & 31."""
    if SHUFFLE:
        level = tl.inline_asm_elementwise("shfl.sync.idx.b32 $0, $1, $2, 31, -1;", "=r,r,r", [table, index],
                                          dtype=tl.int32, is_pure=True, pack=1)
        return level.to(tl.float32, bitcast=True)
    else:
        return tl.load(table + (index & 31))


@triton.jit
def _pairs(word, X_KIND: tl.constexpr):
    """Activation pair words -> (element 2j, element 2j+1) as float32."""
    if X_KIND == 0:  # bf16: the upper half of a float32
        even = (word << 16).to(tl.float32, bitcast=True)
        odd = (word & -65536).to(tl.float32, bitcast=True)
    elif X_KIND == 1:  # fp16
        even = (word & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        odd = (word >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:  # fp32 pairs in int64
        even = word.to(tl.int32).to(tl.float32, bitcast=True)
        odd = (word >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    return even, odd


def _tune_bench(kernel_call, quantiles):
    """Short autotuning runs: the configs differ by far more than the noise."""
    from triton.testing import do_bench

    return do_bench(kernel_call, warmup=3, rep=10, quantiles=quantiles)


def _autotune(configs, key, **options):
    """triton.autotune with short timing runs: through do_bench from Triton 3.3, through the
    warmup/rep milliseconds before (Triton 3.2, which torch 2.6 brings, takes do_bench but does
    not pass it on, and then asks for a GPU driver when the module is imported)."""
    if tuple(int(part) for part in triton.__version__.split(".")[:2]) >= (3, 3):
        return triton.autotune(configs=configs, key=key, do_bench=_tune_bench, **options)
    return triton.autotune(configs=configs, key=key, warmup=3, rep=10, **options)


# (BLOCK_N, BLOCK_G, num_warps) the GEMV autotunes over on a GPU. The load of the next step is
# in flight while the current one is decoded, so a grid keeps about 2 * N * step bytes in flight:
# an H100 needs some 3 MB to stream its memory, which a 4096-row layer reaches only with steps of
# 256 to 512 bytes per row (BLOCK_G 8 and 16 with groups of 64); smaller steps and fewer rows per
# program serve small matrices, whose programs are all resident at once
GEMV_TILES = ((4, 4, 1), (16, 1, 1), (8, 4, 2), (4, 8, 1), (2, 8, 1), (8, 8, 2), (4, 16, 1), (8, 16, 4))
# (BLOCK_N, num_warps, num_stages) for the tiled kernel (float32 activations take 1 stage)
DOT_TILES = ((32, 4, 3), (64, 4, 3), (64, 8, 3))


def gemv_config(block_n: int, block_g: int, warps: int) -> triton.Config:
    return triton.Config({"BLOCK_N": block_n, "BLOCK_G": block_g}, num_warps=warps, num_stages=1)


def dot_config(block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


def _gemv_configs():
    if INTERPRET:  # the interpreter runs one (tests try each GPU tile on its own)
        return [gemv_config(16, 2, 1)]
    return [gemv_config(*tile) for tile in GEMV_TILES]


# the most bytes of each weight row one GEMV step decodes: beyond this (BLOCK_G 16 with groups of
# 128) tiles spill registers
GEMV_MAX_STEP_BYTES = 512


def gemv_configs_for(configs: list, group_size: int) -> list:
    """The GEMV configs worth timing for a group size: those whose step fits GEMV_MAX_STEP_BYTES,
    or else the one with the shortest step."""
    fitting = [config for config in configs if config.kwargs["BLOCK_G"] * group_size // 2 <= GEMV_MAX_STEP_BYTES]
    return fitting or [min(configs, key=lambda config: config.kwargs["BLOCK_G"])]


def _prune_gemv(configs, named_args, **kwargs):
    return gemv_configs_for(configs, kwargs.get("GROUP") or named_args["GROUP"])


@_autotune(_gemv_configs(), ["N", "K", "GROUP"], reset_to_zero=["out_ptr"],
           prune_configs_by={"early_config_prune": _prune_gemv})
@triton.jit
def _gemv_kernel(xw_ptr, codes_ptr, gains_ptr, lut_ptr, out_ptr, N, K, KW, stride_xm, stride_om,
                 GROUP: tl.constexpr, SPLIT_K: tl.constexpr, X_KIND: tl.constexpr, SHUFFLE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    WORDS: tl.constexpr = GROUP // 8  # code words (eight 4-bit codes each) per group
    STEP: tl.constexpr = BLOCK_G * WORDS  # code words of each row per iteration
    pid_n, pid_k, m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_groups = K // GROUP
    per_split = tl.cdiv(n_groups, SPLIT_K)
    g_start = pid_k * per_split
    g_end = tl.minimum(g_start + per_split, n_groups)
    word_end = g_end * WORDS
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    row_ok = rows < N
    rows = tl.where(row_ok, rows, 0)  # clamped: the loads need no row mask
    code_rows = codes_ptr + rows[:, None].to(tl.int64) * KW
    gain_rows = gains_ptr + rows[:, None] * n_groups
    x_row = xw_ptr + m * stride_xm
    quad = tl.arange(0, 4)  # the four activation pair words that meet one code word
    table = _lane_table(lut_ptr, SHUFFLE)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    cols = g_start * WORDS + tl.arange(0, STEP)  # word columns
    code = tl.load(code_rows + cols[None, :], mask=(cols < word_end)[None, :], other=0)  # [BN, STEP]
    xq = tl.load(x_row + cols[:, None] * 4 + quad[None, :], mask=(cols < word_end)[:, None], other=0)  # [STEP, 4]
    for g0 in range(g_start, g_end, BLOCK_G):
        nxt = cols + STEP  # load the next tile while this one is decoded
        code_next = tl.load(code_rows + nxt[None, :], mask=(nxt < word_end)[None, :], other=0)
        xq_next = tl.load(x_row + nxt[:, None] * 4 + quad[None, :], mask=(nxt < word_end)[:, None], other=0)
        pairs_02, pairs_13 = tl.split(tl.reshape(xq, [STEP, 2, 2]))
        pair0, pair2 = tl.split(pairs_02)
        pair1, pair3 = tl.split(pairs_13)
        x0, x1 = _pairs(pair0, X_KIND)
        x2, x3 = _pairs(pair1, X_KIND)
        x4, x5 = _pairs(pair2, X_KIND)
        x6, x7 = _pairs(pair3, X_KIND)
        # code j of a word (bits 4j..4j+3) multiplies activation 8 * col + j; one FMA chain per word
        dot = _level(table, code, SHUFFLE) * x0[None, :]
        dot += _level(table, code >> 4, SHUFFLE) * x1[None, :]
        dot += _level(table, code >> 8, SHUFFLE) * x2[None, :]
        dot += _level(table, code >> 12, SHUFFLE) * x3[None, :]
        dot += _level(table, code >> 16, SHUFFLE) * x4[None, :]
        dot += _level(table, code >> 20, SHUFFLE) * x5[None, :]
        dot += _level(table, code >> 24, SHUFFLE) * x6[None, :]
        dot += _level(table, code >> 28, SHUFFLE) * x7[None, :]
        groups = g0 + tl.arange(0, BLOCK_G)
        gain = tl.load(gain_rows + groups[None, :], mask=(groups < g_end)[None, :], other=0.0).to(tl.float32)
        part = tl.sum(tl.reshape(dot, [BLOCK_N, BLOCK_G, WORDS]), axis=2)  # [BN, BG]
        acc += tl.sum(part * gain, axis=1)
        code, xq, cols = code_next, xq_next, nxt
    out = out_ptr + m * stride_om + rows
    if SPLIT_K == 1:
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok)
    else:
        tl.atomic_add(out, acc, mask=row_ok)


def _dot_configs(stages: int | None = None):
    if INTERPRET:
        return [dot_config(32, 4, 1)]
    return [dot_config(block_n, warps, stages or tile_stages) for block_n, warps, tile_stages in DOT_TILES]


@triton.jit
def _dot_body(x2_ptr, codes_ptr, gains_ptr, lut_ptr, out_ptr, M, N, K, KB, stride_xs, stride_xm, stride_om,
              GROUP: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, F32_DOT: tl.constexpr,
              SHUFFLE: tl.constexpr, BLOCK_N: tl.constexpr):
    HALF: tl.constexpr = GROUP // 2
    # byte columns per K step: a group of up to 64 weights at a time (larger groups in slices),
    # which keeps the decoded tiles in registers on every card (sm_75 and up)
    STEP: tl.constexpr = HALF if HALF < 32 else 32
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_groups = K // GROUP
    per_split = tl.cdiv(n_groups, SPLIT_K)
    g_start = pid_k * per_split
    g_end = tl.minimum(g_start + per_split, n_groups)
    rows_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    rows_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    m_ok, n_ok = rows_m < M, rows_n < N
    rows_n = tl.where(n_ok, rows_n, 0)
    lane = tl.arange(0, STEP)
    code_rows = codes_ptr + rows_n[:, None].to(tl.int64) * KB
    gain_rows = gains_ptr + rows_n * n_groups  # [BN]
    x_rows = x2_ptr + rows_m[:, None] * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    table = _lane_table(lut_ptr, SHUFFLE)
    byte_start, byte_end = g_start * HALF, g_end * HALF
    byte = tl.load(code_rows + (byte_start + lane)[None, :], mask=(byte_start + lane < byte_end)[None, :], other=0)
    for col in range(byte_start, byte_end, STEP):
        cols = col + lane  # [S] byte columns of this step, all in group col // HALF
        nxt = cols + STEP  # load the next step while this one is decoded
        byte_next = tl.load(code_rows + nxt[None, :], mask=(nxt < byte_end)[None, :], other=0)
        gain = tl.load(gain_rows + col // HALF).to(tl.float32)[:, None]  # [BN, 1]
        x_even = tl.load(x_rows + cols[None, :], mask=m_ok[:, None], other=0.0)  # [BM, S]
        x_odd = tl.load(x_rows + stride_xs + cols[None, :], mask=m_ok[:, None], other=0.0)
        w_even = (_level(table, byte.to(tl.int32), SHUFFLE) * gain).to(x_even.dtype)  # [BN, S]
        w_odd = (_level(table, (byte >> 4).to(tl.int32), SHUFFLE) * gain).to(x_even.dtype)
        if F32_DOT:  # float32 activations; also bf16 under the interpreter, whose dot lacks bf16
            acc = tl.dot(x_even.to(tl.float32), tl.trans(w_even.to(tl.float32)), acc, input_precision="ieee")
            acc = tl.dot(x_odd.to(tl.float32), tl.trans(w_odd.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(x_even, tl.trans(w_even), acc)
            acc = tl.dot(x_odd, tl.trans(w_odd), acc)
        byte = byte_next
    # int64: M * N passes 2^31 for a quantized head over long windows (eval: 3 x 8192 tokens x 128256)
    out = out_ptr + rows_m[:, None].to(tl.int64) * stride_om + rows_n[None, :]
    out_ok = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K == 1:
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=out_ok)
    else:
        tl.atomic_add(out, acc, mask=out_ok)


def _autotuned_dot(configs):
    return _autotune(configs, ["N", "K", "GROUP", "BLOCK_M"], reset_to_zero=["out_ptr"])(_dot_body)


_dot_kernel = _autotuned_dot(_dot_configs())
# float32 activations multiply on the CUDA cores, where software pipelining keeps every stage's
# operands in registers: with 3 stages ptxas spills on sm_80 to sm_120, with 1 it does not
_dot_kernel_f32 = _autotuned_dot(_dot_configs(stages=1))
# every autotuned kernel, for checks that pin or list their configs
AUTOTUNED = {"gemv": _gemv_kernel, "dot": _dot_kernel, "dot_f32": _dot_kernel_f32}


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    if INTERPRET or not torch.cuda.is_available():
        return 8
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def split_k_for(n: int, k_padded: int, group_size: int, rows_per_program: int, device_index: int = 0) -> int:
    """How many K slices, from the weight shape only: split while N alone gives fewer programs
    than two per multiprocessor and each slice keeps at least 16 groups."""
    programs = triton.cdiv(n, rows_per_program)
    target = 2 * _sm_count(device_index)
    split = 1
    while programs * split < target and k_padded // (group_size * split * 2) >= 16:
        split *= 2
    return split


def _output(m: int, n: int, split: int, x: torch.Tensor) -> torch.Tensor:
    return torch.empty(m, n, device=x.device, dtype=x.dtype) if split == 1 else \
        torch.zeros(m, n, device=x.device, dtype=torch.float32)


def turbo_matmul(x_rot: torch.Tensor, codes: torch.Tensor, gains: torch.Tensor, group_size: int,
                 split_k: int | None = None) -> torch.Tensor:
    """y = x_rot @ Wr.T on CUDA. x_rot: [M, Kp] -> [M, N] in x_rot's dtype."""
    if group_size & (group_size - 1) or group_size < 32 or x_rot.dtype not in _PAIR_WORDS:
        from localai.kernels import reference  # the kernels need a power-of-two group >= 32

        return reference.turbo_matmul(x_rot, codes, gains, group_size)
    x = x_rot.contiguous()
    if x.storage_offset() % 2:  # pair words must start on an even element
        x = x.clone()
    codes, gains = codes.contiguous(), gains.contiguous()
    m, k_padded = x.shape
    n, k_bytes = codes.shape
    lut = level_table(str(x.device))
    device_index = x.device.index or 0
    if m <= GEMV_MAX_ROWS:
        x_kind, word_dtype = _PAIR_WORDS[x.dtype]
        words = x.view(word_dtype)  # [M, Kp / 2]: the pair (2j, 2j+1) per word
        if codes.storage_offset() % 4:  # code words must start on a 4-byte boundary
            codes = codes.clone()
        code_words = codes.view(torch.int32)  # [N, Kp / 8]: eight codes per word, code 8c + j in bits 4j..4j+3
        split = split_k or split_k_for(n, k_padded, group_size, 4, device_index)
        out = _output(m, n, split, x)
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), split, m)  # noqa: E731
        with _AUTOTUNED_LAUNCH:
            _gemv_kernel[grid](words, code_words, gains, lut, out, n, k_padded, code_words.shape[1], words.stride(0),
                               out.stride(0), GROUP=group_size, SPLIT_K=split, X_KIND=x_kind, SHUFFLE=SHUFFLE_LOOKUP)
    else:
        x2 = x.view(m, k_bytes, 2).permute(2, 0, 1).contiguous()  # [2, M, Kp / 2]: even, odd columns
        block_m = 16 if m <= 16 else 32 if m <= 32 else 64
        split = split_k or split_k_for(n, k_padded, group_size, 32, device_index)
        out = _output(m, n, split, x)
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, block_m), split)  # noqa: E731
        f32 = x.dtype == torch.float32
        # float32 looks levels up in memory: with shuffled levels in registers its largest tiles spill
        with _AUTOTUNED_LAUNCH:
            (_dot_kernel_f32 if f32 else _dot_kernel)[grid](
                x2, codes, gains, lut, out, m, n, k_padded, k_bytes, x2.stride(0), x2.stride(1), out.stride(0),
                GROUP=group_size, SPLIT_K=split, BLOCK_M=block_m, SHUFFLE=SHUFFLE_LOOKUP and not f32,
                F32_DOT=f32 or (INTERPRET and x.dtype == torch.bfloat16))
    return out.to(x_rot.dtype)


@triton.jit
def _rotate_kernel(x_ptr, signs_ptr, out_ptr, K, KP, stride_x, stride_o, scale,
                   BLOCK: tl.constexpr, LOG_BLOCK: tl.constexpr, CHUNKS: tl.constexpr):
    row, chunk = tl.program_id(0), tl.program_id(1)
    cols = chunk * CHUNKS * BLOCK + tl.arange(0, CHUNKS * BLOCK)
    v = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
    v = v * tl.load(signs_ptr + cols, mask=cols < KP, other=0.0)
    v = tl.reshape(v, [CHUNKS, BLOCK])
    # butterflies: stage s pairs element i with i + 2^s inside each run of 2^(s+1)
    for s in tl.static_range(LOG_BLOCK):
        v = tl.reshape(v, [CHUNKS, BLOCK >> (s + 1), 2, 1 << s])
        a, b = tl.split(tl.permute(v, (0, 1, 3, 2)))  # [C, B / 2^(s+1), 2^s] each
        v = tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2))
    v = tl.reshape(v, [CHUNKS * BLOCK]) * scale
    tl.store(out_ptr + row * stride_o + cols, v.to(out_ptr.dtype.element_ty), mask=cols < KP)


def rotate(x: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """Random-sign block Hadamard rotation on CUDA: x [M, K] -> [M, Kp] in x's dtype."""
    x = x.contiguous()
    m, k = x.shape
    k_padded = signs.shape[0]
    out = torch.empty(m, k_padded, device=x.device, dtype=x.dtype)
    chunks = max(1, min(1024 // block, k_padded // block))
    chunks = 1 << (chunks.bit_length() - 1)  # a power of two
    grid = (m, triton.cdiv(k_padded, chunks * block))
    _rotate_kernel[grid](x, signs.float().contiguous(), out, k, k_padded, x.stride(0), out.stride(0), block ** -0.5,
                         BLOCK=block, LOG_BLOCK=block.bit_length() - 1, CHUNKS=chunks)
    return out
