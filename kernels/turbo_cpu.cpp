// TurboQuant 4-bit matmul for the CPU: codebook lookup fused with the dot product.
//
// Built on first use by kernels/cpu.py (g++ -O3 -march=native -fopenmp) and called through
// ctypes. TURBO_LEVELS (the 16 codebook levels) comes in as a -D flag so the Python
// codebook stays the one source of truth. Plain C ABI, no torch headers: it builds in a second.
//
// Layout (see kernels/reference.py): codes uint8 [N, Kp/2], element 2j in the low nibble;
// gains float16 [N, Kp/G]; x float32 [M, Kp] (already rotated); out float32 [M, N].
// Vector paths: AVX-512 (one 16-entry permute per 16 weights), AVX2 (two 8-entry permutes
// and a blend per 8 weights), and a scalar path for everything else, behind the same few
// primitives (vdecode, vfma, ...) so the kernels are written once.

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

// ---- vector primitives of each build: a vec holds W floats ---------------------------------
// vdecode turns W code bytes into the W even-indexed and the W odd-indexed weights they hold
// (low and high nibbles), so one widening of the bytes serves both; the activations are split
// into even and odd elements to match (split_pairs). TURBO_STEP = 2 W weights per step.

#if defined(__AVX512F__)
#define TURBO_VECTOR_WIDTH 16
typedef __m512 vec;
static inline vec vzero() { return _mm512_setzero_ps(); }
static inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
static inline vec vset1(float f) { return _mm512_set1_ps(f); }
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
// the permute reads the low 4 bits of each index: the low nibble as it is, the high one shifted down
static inline void vdecode(const uint8_t* p, vec* even, vec* odd) {
    const __m512 lut = _mm512_loadu_ps(LEVELS);
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
    *even = _mm512_permutexvar_ps(bytes, lut);
    *odd = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), lut);
}

#elif defined(__AVX2__) && defined(__FMA__)
#define TURBO_VECTOR_WIDTH 8
typedef __m256 vec;
static inline vec vzero() { return _mm256_setzero_ps(); }
static inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
static inline vec vset1(float f) { return _mm256_set1_ps(f); }
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
// 16 levels from two 8-entry permutes (index bits 0-2); bit 3, moved to the sign bit, picks one.
// Bits above the nibble shift out.
static inline vec lookup(__m256i index) {
    const __m256 low = _mm256_permutevar8x32_ps(_mm256_loadu_ps(LEVELS), index);
    const __m256 high = _mm256_permutevar8x32_ps(_mm256_loadu_ps(LEVELS + 8), index);
    return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(index, 28)));
}
static inline void vdecode(const uint8_t* p, vec* even, vec* odd) {
    const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p));
    *even = lookup(bytes);
    *odd = lookup(_mm256_srli_epi32(bytes, 4));
}

#else
#define TURBO_VECTOR_WIDTH 2
struct vec { float a, b; };
static inline vec vzero() { return {0.0f, 0.0f}; }
static inline vec vload(const float* p) { return {p[0], p[1]}; }
static inline vec vset1(float f) { return {f, f}; }
static inline vec vfma(vec a, vec b, vec c) { return {a.a * b.a + c.a, a.b * b.b + c.b}; }
static inline float vsum(vec v) { return v.a + v.b; }
static inline void vdecode(const uint8_t* p, vec* even, vec* odd) {
    *even = {LEVELS[p[0] & 15], LEVELS[p[1] & 15]};
    *odd = {LEVELS[p[0] >> 4], LEVELS[p[1] >> 4]};
}
#endif

#define TURBO_STEP (2 * TURBO_VECTOR_WIDTH)

// Activation rows x[M, Kp] -> each row's even elements, then its odd ones: out[M, Kp].
static void split_pairs(const float* x, int64_t m, int64_t kp, float* out) {
    for (int64_t i = 0; i < m; i++) {
        const float* row = x + i * kp;
        float* even = out + i * kp;
        float* odd = even + kp / 2;
        for (int64_t j = 0; j < kp / 2; j++) {
            even[j] = row[2 * j];
            odd[j] = row[2 * j + 1];
        }
    }
}

// ---- MB activation rows against RB weight rows: out[i * ldo + j] = <x[i], row j> ----------
// x holds split rows (split_pairs). MB x RB independent accumulators: one row alone would wait
// on its own FMA latency, so a decode step of one or two sequences takes four weight rows at once.

template <int MB, int RB>
static void tile_dot(const float* x, int64_t kp, const uint8_t* codes, const uint16_t* gains,
                     int64_t group, float* out, int64_t ldo) {
    const int64_t half = kp / 2, groups = kp / group;
    vec total[MB][RB];
    for (int i = 0; i < MB; i++)
        for (int j = 0; j < RB; j++) total[i][j] = vzero();
    for (int64_t k0 = 0; k0 < kp; k0 += group) {
        vec acc[MB][RB];
        for (int i = 0; i < MB; i++)
            for (int j = 0; j < RB; j++) acc[i][j] = vzero();
        for (int64_t b = k0 / 2; b < (k0 + group) / 2; b += TURBO_VECTOR_WIDTH) {  // byte b: weights 2b, 2b+1
            vec even[RB], odd[RB];
            for (int j = 0; j < RB; j++) vdecode(codes + j * half + b, &even[j], &odd[j]);
            for (int i = 0; i < MB; i++) {
                const vec x_even = vload(x + i * kp + b), x_odd = vload(x + i * kp + half + b);
                for (int j = 0; j < RB; j++) acc[i][j] = vfma(odd[j], x_odd, vfma(even[j], x_even, acc[i][j]));
            }
        }
        for (int j = 0; j < RB; j++) {
            const vec gain = vset1(half_to_float(gains[j * groups + k0 / group]));
            for (int i = 0; i < MB; i++) total[i][j] = vfma(acc[i][j], gain, total[i][j]);
        }
    }
    for (int i = 0; i < MB; i++)
        for (int j = 0; j < RB; j++) out[i * ldo + j] = vsum(total[i][j]);
}

// MB activation rows (1 or 2) against weight rows [r, r + 4), or one at a time past n.
template <int MB>
static void four_rows(const float* x, int64_t kp, const uint8_t* codes, const uint16_t* gains, int64_t n,
                      int64_t group, float* out, int64_t r) {
    const int64_t groups = kp / group;
    if (r + 4 <= n) {
        tile_dot<MB, 4>(x, kp, codes + r * (kp / 2), gains + r * groups, group, out + r, n);
        return;
    }
    for (; r < n; r++) tile_dot<MB, 1>(x, kp, codes + r * (kp / 2), gains + r * groups, group, out + r, n);
}

// out[M, N] for split activation rows xs[M, Kp].
static void split_matmul(const float* xs, int64_t m, int64_t kp, const uint8_t* codes, const uint16_t* gains,
                         int64_t n, int64_t group, float* out) {
    const int64_t groups = kp / group;
    if (m <= 2) {
#pragma omp parallel for schedule(static) if (m * n * kp >= PARALLEL_MIN_WORK)
        for (int64_t r = 0; r < n; r += 4) {
            if (m == 2) four_rows<2>(xs, kp, codes, gains, n, group, out, r);
            else four_rows<1>(xs, kp, codes, gains, n, group, out, r);
        }
        return;
    }
#pragma omp parallel for schedule(static) if (m * n * kp >= PARALLEL_MIN_WORK)
    for (int64_t r = 0; r < n; r++) {  // three to eight activation rows at a time
        const uint8_t* row_codes = codes + r * (kp / 2);
        const uint16_t* row_gains = gains + r * groups;
        for (int64_t i = 0; i < m; i += 8) {
            const float* xi = xs + i * kp;
            float* oi = out + i * n + r;
            switch (m - i < 8 ? m - i : 8) {
                case 8: tile_dot<8, 1>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 7: tile_dot<7, 1>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 6: tile_dot<6, 1>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 5: tile_dot<5, 1>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 4: tile_dot<4, 1>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 3: tile_dot<3, 1>(xi, kp, row_codes, row_gains, group, oi, n); break;
                case 2: tile_dot<2, 1>(xi, kp, row_codes, row_gains, group, oi, n); break;
                default: tile_dot<1, 1>(xi, kp, row_codes, row_gains, group, oi, n); break;
            }
        }
    }
}

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

// Weights per step of this build's vector path: 32 (AVX-512), 16 (AVX2) or 4 (scalar). Group sizes
// must be multiples of it (kernels/cpu.py sends other sizes to the torch path).
int turbo_vector_width(void) { return TURBO_STEP; }

// out[M, N] = x[M, Kp] @ dequantized(codes, gains)[N, Kp].T, for the batches of a decode step.
void turbo_matmul_f32(const float* x, int64_t m, int64_t kp, const uint8_t* codes, const uint16_t* gains,
                      int64_t n, int64_t group, float* out) {
    float* xs = new float[m * kp];
    split_pairs(x, m, kp, xs);
    split_matmul(xs, m, kp, codes, gains, n, group, out);
    delete[] xs;
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
