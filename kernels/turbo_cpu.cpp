// TurboQuant 4-bit matmul for the CPU: codebook lookup fused with the dot product.
//
// Built on first use by kernels/cpu.py (g++ -O3 -march=native -fopenmp) and called through
// ctypes. TURBO_LEVELS (the 16 codebook levels) comes in as a -D flag so the Python
// codebook stays the one source of truth. Plain C ABI, no torch headers: it builds in a second.
//
// Layout (see kernels/reference.py): codes uint8 [N, Kp/2], element 2j in the low nibble;
// gains float16 [N, Kp/G]; x float32 [M, Kp] (already rotated); out float32 [M, N].
// Vector paths: AVX-512 (one 16-entry permute per 16 weights), AVX2 (two 8-entry permutes
// and a blend per 8 weights), and a scalar path for everything else.

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) || defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

static const float LEVELS[16] = {TURBO_LEVELS};

// work below this many multiply-adds runs on one thread: waking the pool costs more
static const int64_t PARALLEL_MIN_WORK = 1 << 17;

static inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0 && mantissa == 0) {
        bits = sign;
    } else if (exponent == 0) {  // subnormal: renormalize
        int shifts = 0;
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            shifts++;
        }
        bits = sign | ((uint32_t)(113 - shifts) << 23) | ((mantissa & 0x3ffu) << 13);
    } else if (exponent == 31) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

// ---- one weight row against MB activation rows: out[i * ldo] = <x[i], row> ----

#if defined(__AVX512F__)
#define TURBO_VECTOR_WIDTH 16
// 8 bytes -> 16 levels: duplicate each byte, shift odd lanes by 4; the permute reads 4 index bits
static inline __m512 decode16(const uint8_t* p, __m512 lut, __m512i shifts) {
    __m128i b = _mm_loadl_epi64((const __m128i*)p);
    b = _mm_unpacklo_epi8(b, b);
    __m512i idx = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(b), shifts);
    return _mm512_permutexvar_ps(idx, lut);
}

template <int MB>
static void row_dot(const float* x, int64_t kp, const uint8_t* codes, const uint16_t* gains,
                    int64_t group, float* out, int64_t ldo) {
    const __m512 lut = _mm512_loadu_ps(LEVELS);
    const __m512i shifts = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
    __m512 total[MB];
    for (int i = 0; i < MB; i++) total[i] = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < kp; k0 += group) {
        __m512 acc[MB];
        for (int i = 0; i < MB; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t k = k0; k < k0 + group; k += 16) {
            __m512 w = decode16(codes + k / 2, lut, shifts);
            for (int i = 0; i < MB; i++) acc[i] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + i * kp + k), acc[i]);
        }
        __m512 gain = _mm512_set1_ps(half_to_float(gains[k0 / group]));
        for (int i = 0; i < MB; i++) total[i] = _mm512_fmadd_ps(acc[i], gain, total[i]);
    }
    for (int i = 0; i < MB; i++) out[i * ldo] = _mm512_reduce_add_ps(total[i]);
}

#elif defined(__AVX2__) && defined(__FMA__)
#define TURBO_VECTOR_WIDTH 8
// 4 bytes -> 8 levels: two 8-entry permutes, index bit 3 (moved to the sign bit) picks one
static inline __m256 decode8(const uint8_t* p, __m256 lut_low, __m256 lut_high, __m256i shifts) {
    int32_t word;
    memcpy(&word, p, sizeof word);
    __m128i b = _mm_unpacklo_epi8(_mm_cvtsi32_si128(word), _mm_cvtsi32_si128(word));
    __m256i idx = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(b), shifts);
    __m256 low = _mm256_permutevar8x32_ps(lut_low, idx);
    __m256 high = _mm256_permutevar8x32_ps(lut_high, idx);
    return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

static inline float reduce_add8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <int MB>
static void row_dot(const float* x, int64_t kp, const uint8_t* codes, const uint16_t* gains,
                    int64_t group, float* out, int64_t ldo) {
    const __m256 lut_low = _mm256_loadu_ps(LEVELS);
    const __m256 lut_high = _mm256_loadu_ps(LEVELS + 8);
    const __m256i shifts = _mm256_set_epi32(4, 0, 4, 0, 4, 0, 4, 0);
    __m256 total[MB];
    for (int i = 0; i < MB; i++) total[i] = _mm256_setzero_ps();
    for (int64_t k0 = 0; k0 < kp; k0 += group) {
        __m256 acc[MB];
        for (int i = 0; i < MB; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t k = k0; k < k0 + group; k += 8) {
            __m256 w = decode8(codes + k / 2, lut_low, lut_high, shifts);
            for (int i = 0; i < MB; i++) acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + i * kp + k), acc[i]);
        }
        __m256 gain = _mm256_set1_ps(half_to_float(gains[k0 / group]));
        for (int i = 0; i < MB; i++) total[i] = _mm256_fmadd_ps(acc[i], gain, total[i]);
    }
    for (int i = 0; i < MB; i++) out[i * ldo] = reduce_add8(total[i]);
}

#else
#define TURBO_VECTOR_WIDTH 2
template <int MB>
static void row_dot(const float* x, int64_t kp, const uint8_t* codes, const uint16_t* gains,
                    int64_t group, float* out, int64_t ldo) {
    float total[MB] = {0};
    for (int64_t k0 = 0; k0 < kp; k0 += group) {
        float acc[MB] = {0};
        for (int64_t k = k0; k < k0 + group; k += 2) {
            uint8_t byte = codes[k / 2];
            float w0 = LEVELS[byte & 15], w1 = LEVELS[byte >> 4];
            for (int i = 0; i < MB; i++) acc[i] += w0 * x[i * kp + k] + w1 * x[i * kp + k + 1];
        }
        float gain = half_to_float(gains[k0 / group]);
        for (int i = 0; i < MB; i++) total[i] += acc[i] * gain;
    }
    for (int i = 0; i < MB; i++) out[i * ldo] = total[i];
}
#endif

// ---- dense fp32 rows: a few activation rows times a plain row-major weight ---------------
// A decode step of one to three sequences reads every weight once and does little math with
// it: the speed is the speed of streaming the weight, which these loops keep close to the
// memory bandwidth (oneDNN's packed kernels and MKL's sgemv stay well below it on some CPUs).

// The compiler vectorizes the reduction for the build's -march (measured as fast as
// hand-written AVX-512 here).
static inline float dense_dot(const float* w, const float* x, int64_t k) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < k; i++) s += w[i] * x[i];
    return s;
}

extern "C" {

// Which vector path this build took: 16 (AVX-512), 8 (AVX2) or 2 (scalar). Group sizes must be
// multiples of it (kernels/cpu.py sends other sizes to the torch path).
int turbo_vector_width(void) { return TURBO_VECTOR_WIDTH; }

// out[M, N] = x[M, Kp] @ dequantized(codes, gains)[N, Kp].T, up to eight activation rows per decode.
void turbo_matmul_f32(const float* x, int64_t m, int64_t kp, const uint8_t* codes, const uint16_t* gains,
                      int64_t n, int64_t group, float* out) {
    const int64_t groups = kp / group;
#pragma omp parallel for schedule(static) if (m * n * kp >= PARALLEL_MIN_WORK)
    for (int64_t r = 0; r < n; r++) {
        const uint8_t* row_codes = codes + r * (kp / 2);
        const uint16_t* row_gains = gains + r * groups;
        for (int64_t i = 0; i < m; i += 8) {
            const float* xi = x + i * kp;
            float* oi = out + i * n + r;
            switch (m - i < 8 ? m - i : 8) {
                case 8: row_dot<8>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 7: row_dot<7>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 6: row_dot<6>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 5: row_dot<5>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 4: row_dot<4>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 3: row_dot<3>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 2: row_dot<2>(xi, kp, row_codes, row_gains, group, oi, n); break;
                default: row_dot<1>(xi, kp, row_codes, row_gains, group, oi, n); break;
            }
        }
    }
}

// Rows [0, n) of the dequantized weight into out[n, Kp] (float32), for the large-batch path.
void turbo_dequantize_f32(const uint8_t* codes, const uint16_t* gains, int64_t n, int64_t kp, int64_t group,
                          float* out) {
    const int64_t groups = kp / group;
#pragma omp parallel for schedule(static) if (n * kp >= PARALLEL_MIN_WORK)
    for (int64_t r = 0; r < n; r++) {
        const uint8_t* row_codes = codes + r * (kp / 2);
        float* row_out = out + r * kp;
        for (int64_t g = 0; g < groups; g++) {
            const float gain = half_to_float(gains[r * groups + g]);
            for (int64_t k = g * group; k < (g + 1) * group; k += 2) {
                const uint8_t byte = row_codes[k / 2];
                row_out[k] = gain * LEVELS[byte & 15];
                row_out[k + 1] = gain * LEVELS[byte >> 4];
            }
        }
    }
}

// Random-sign block Hadamard rotation: out[r, :Kp] = FWHT_block(pad(x[r, :K]) * signs) / sqrt(block).
void turbo_rotate_f32(const float* x, int64_t rows, int64_t k, const float* signs, int64_t kp, int64_t block,
                      float* out) {
    const float scale = 1.0f / sqrtf((float)block);
#pragma omp parallel for schedule(static) if (rows * kp * 8 >= PARALLEL_MIN_WORK)
    for (int64_t r = 0; r < rows; r++) {
        const float* xr = x + r * k;
        float* o = out + r * kp;
        for (int64_t i = 0; i < k; i++) o[i] = xr[i] * signs[i] * scale;
        for (int64_t i = k; i < kp; i++) o[i] = 0.0f;
        for (int64_t b = 0; b < kp; b += block) {
            float* v = o + b;
            for (int64_t h = 1; h < block; h *= 2) {
                for (int64_t i = 0; i < block; i += 2 * h) {
                    for (int64_t j = i; j < i + h; j++) {
                        const float a = v[j], c = v[j + h];
                        v[j] = a + c;
                        v[j + h] = a - c;
                    }
                }
            }
        }
    }
}

// rotate + matmul in one call for small batches: out[M, N] = rotate(x[M, K]) @ W.T.
void turbo_linear_f32(const float* x, int64_t m, int64_t k, const float* signs, int64_t kp, int64_t block,
                      const uint8_t* codes, const uint16_t* gains, int64_t n, int64_t group, float* out) {
    float* x_rot = new float[m * kp];
    turbo_rotate_f32(x, m, k, signs, kp, block, x_rot);
    turbo_matmul_f32(x_rot, m, kp, codes, gains, n, group, out);
    delete[] x_rot;
}


// out[M, N] = x[M, K] @ w[N, K].T for plain fp32 tensors; meant for M <= 3 (one weight row is
// reused from L1 for every activation row).
void dense_matmul_f32(const float* x, int64_t m, int64_t k, const float* w, int64_t n, float* out) {
#pragma omp parallel for schedule(static) if (m * n * k >= PARALLEL_MIN_WORK)
    for (int64_t r = 0; r < n; r++) {
        const float* wr = w + r * k;
        for (int64_t i = 0; i < m; i++) out[i * n + r] = dense_dot(wr, x + i * k, k);
    }
}

}  // extern "C"
