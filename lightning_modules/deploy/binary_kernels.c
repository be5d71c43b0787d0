/* Packed-bit kernels for layers whose weights and inputs are both 1-bit (XNOR-Net, Rastegari et
 * al. 2016; BNN, Courbariaux, Hubara et al. 2016; DoReFa W1A1, Zhou et al. 2016).
 *
 * Plain C, no torch headers: binary.py builds it with gcc and calls it through ctypes.
 *
 * Layouts (uint64 words, bit b of word w is channel 64 w + b, padded with zero bits):
 *   activations  xp[n][h][w][Cw]      (NHWC-bit, Cw = ceil(C / 64))
 *   weights      wp[o][kh][kw][Cw]    (bit = 1 for +1)
 * A linear layer is the conv of a 1 x batch image with a 1 x 1 kernel: N = 1, H = 1, W = batch.
 *
 * Input encodings:
 *   pm1 (act01 = 0): x_b = sign(x), sign(0) = +1, bit = x >= 0, values +-1 (BNN, XNOR-Net);
 *     dot = K_valid - 2 popcount(x XOR w), K_valid = C x (number of in-bounds taps): zero
 *     padding contributes 0, so only in-bounds taps are visited and counted.
 *   01 (act01 = 1): x_b = round(clip(x, 0, 1)) (round half to even: 1 iff x > 0.5), values
 *     {0, 1} (DoReFa k = 1); dot = 2 popcount(x AND w) - popcount(x).
 * Output: y[n, o, p] = dot * alpha[o] * K[n, p] + bias[o], K = 1 unless XNOR-Net's scale is asked
 * for: K[n, p] = (sum of A over the in-bounds taps of p) / (kh kw), A = mean_c |x| per pixel.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t u64;

#define OB 4   /* output channels per register block */
#define OBT 32 /* output channels per OpenMP task */

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* Transpose the 8 x 8 bit matrix held in x (bit 8 i + j = row i, column j; Hacker's Delight,
 * sec. 7-3). */
static inline u64 transpose8(u64 x)
{
    u64 t;
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;
    x = x ^ t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL;
    x = x ^ t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL;
    return x ^ t ^ (t << 28);
}

/* bit i = x_b(v[i]) for 8 consecutive floats; asum += |v| lane-wise */
static inline u64 bits8(const float *v, int act01, __m256 *asum)
{
    const __m256 x = _mm256_loadu_ps(v);
    *asum = _mm256_add_ps(*asum, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x));
    const __m256 m = act01 ? _mm256_cmp_ps(x, _mm256_set1_ps(0.5f), _CMP_GT_OQ)
                           : _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
    return (u64)_mm256_movemask_ps(m);
}

static inline u64 bit1(float v, int act01, float *asum)
{
    *asum += __builtin_fabsf(v);
    return (u64)(act01 ? v > 0.5f : v >= 0.0f);
}

/* bit q = x_b(v[q sp]) for q < nq; as[q] += |v[q sp]| */
static inline u64 bitsn(const float *v, int64_t sp, int64_t nq, int act01, float *as)
{
    u64 b = 0;
    for (int64_t q = 0; q < nq; q++)
        b |= bit1(v[q * sp], act01, &as[q]) << q;
    return b;
}

static inline float hsum_ps(__m256 v)
{
    float f[8], s = 0.0f;
    _mm256_storeu_ps(f, v);
    for (int i = 0; i < 8; i++)
        s += f[i];
    return s;
}

/* Binarise and pack x (N x C x P, element strides sn, sc, sp) into out[n][p][Cw]; with A, also
 * A[n][p] = mean_c |x|. One pass over x. Channels contiguous (sc = 1: a linear layer's input):
 * 8 channels per compare + movemask. Pixels contiguous (sp = 1: NCHW): tiles of 8 pixels, one
 * compare + movemask per channel, then 8 x 8 bit transposes turn channel rows into pixel words. */
void bk_pack(const float *x, int64_t N, int64_t C, int64_t P, int64_t sn, int64_t sc, int64_t sp,
             int act01, u64 *out, float *A, int threads)
{
    const int64_t Cw = (C + 63) / 64, nt = sc == 1 ? P : (P + 7) / 8;
    #pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++)
        for (int64_t t = 0; t < nt; t++) {
            if (sc == 1) {
                const float *xs = x + n * sn + t * sp;
                u64 *o = out + (n * P + t) * Cw;
                __m256 av = _mm256_setzero_ps();
                float as = 0.0f;
                int64_t c = 0;
                for (; c + 8 <= C; c += 8) {
                    if (c % 64 == 0)
                        o[c / 64] = 0;
                    o[c / 64] |= bits8(xs + c, act01, &av) << (c % 64);
                }
                if (c % 64 == 0 && c < C)
                    o[c / 64] = 0;
                for (; c < C; c++)
                    o[c / 64] |= bit1(xs[c], act01, &as) << (c % 64);
                if (A)
                    A[n * P + t] = (hsum_ps(av) + as) / (float)C;
                continue;
            }
            const int64_t p0 = t * 8, nq = imin(8, P - p0);
            const float *xs = x + n * sn + p0 * sp;
            const int full = nq == 8 && sp == 1;
            __m256 av = _mm256_setzero_ps();
            float as[8] = {0};
            for (int64_t cw = 0; cw < Cw; cw++) {
                u64 wd[8] = {0};
                for (int64_t c8 = cw * 64; c8 < imin(C, cw * 64 + 64); c8 += 8) {
                    u64 rows = 0; /* byte i: the nq pixels' bits of channel c8 + i */
                    for (int64_t i = 0; i < imin(8, C - c8); i++)
                        rows |= (full ? bits8(xs + (c8 + i) * sc, act01, &av)
                                      : bitsn(xs + (c8 + i) * sc, sp, nq, act01, as)) << (8 * i);
                    const u64 cols = transpose8(rows); /* byte q: pixel q's bits of channels c8.. */
                    for (int64_t q = 0; q < nq; q++)
                        wd[q] |= ((cols >> (8 * q)) & 0xff) << (c8 % 64);
                }
                for (int64_t q = 0; q < nq; q++)
                    out[(n * P + p0 + q) * Cw + cw] = wd[q];
            }
            if (A) {
                float f[8];
                _mm256_storeu_ps(f, av);
                for (int64_t q = 0; q < nq; q++)
                    A[n * P + p0 + q] = (f[q] + as[q]) / (float)C;
            }
        }
}

/* Taps k in [lo, hi) for which 0 <= i0 + k < H (i0 = output coordinate x stride - padding). */
static inline void tap_range(int64_t i0, int64_t K, int64_t H, int64_t *lo, int64_t *hi)
{
    *lo = i0 < 0 ? -i0 : 0;
    *hi = imin(K, H - i0);
    if (*hi < *lo)
        *hi = *lo;
}

/* popcount of each byte of v: nibble lookup with vpshufb (Mula, Kurz, Lemire 2018) */
static inline __m256i popcnt_bytes(__m256i v)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)));
}

static inline __m256i op(__m256i a, __m256i b, const int act01)
{
    return act01 ? _mm256_and_si256(a, b) : _mm256_xor_si256(a, b);
}

/* acc[q][j] += popcount(op(x_q[i], w_j[woff + i])) over i < L for NP pixels x_q and OB weight
 * rows w_j, op = AND for act01 else XOR; px[q] += popcount(x_q[i]) when act01. Four words per
 * AVX2 vector; byte counts (at most 8 per vector) are summed for up to 31 vectors, then widened
 * with vpsadbw into the 64-bit lanes of acc; the last L mod 4 words use POPCNT into tail. */
static inline __attribute__((always_inline)) void
block(const u64 *x0, const u64 *x1, const u64 *const *w, int64_t woff, int64_t L, const int NP,
      const int act01, __m256i acc[2][OB], __m256i px[2], int64_t tail[2][OB + 1])
{
    const __m256i zero = _mm256_setzero_si256();
    const int64_t L4 = L & ~(int64_t)3;
    for (int64_t i = 0; i < L4;) {
        const int64_t end = imin(L4, i + 4 * 31);
        __m256i c[2][OB], cx[2] = {zero, zero};
        for (int j = 0; j < OB; j++)
            c[0][j] = c[1][j] = zero;
        for (; i < end; i += 4) {
            const __m256i a = _mm256_loadu_si256((const __m256i *)(x0 + i));
            const __m256i b = NP > 1 ? _mm256_loadu_si256((const __m256i *)(x1 + i)) : zero;
            for (int j = 0; j < OB; j++) {
                const __m256i wj = _mm256_loadu_si256((const __m256i *)(w[j] + woff + i));
                c[0][j] = _mm256_add_epi8(c[0][j], popcnt_bytes(op(a, wj, act01)));
                if (NP > 1)
                    c[1][j] = _mm256_add_epi8(c[1][j], popcnt_bytes(op(b, wj, act01)));
            }
            if (act01) {
                cx[0] = _mm256_add_epi8(cx[0], popcnt_bytes(a));
                if (NP > 1)
                    cx[1] = _mm256_add_epi8(cx[1], popcnt_bytes(b));
            }
        }
        for (int q = 0; q < NP; q++) {
            for (int j = 0; j < OB; j++)
                acc[q][j] = _mm256_add_epi64(acc[q][j], _mm256_sad_epu8(c[q][j], zero));
            if (act01)
                px[q] = _mm256_add_epi64(px[q], _mm256_sad_epu8(cx[q], zero));
        }
    }
    for (int64_t i = L4; i < L; i++) {
        const u64 a = x0[i], b = NP > 1 ? x1[i] : 0;
        for (int j = 0; j < OB; j++) {
            const u64 wj = w[j][woff + i];
            tail[0][j] += __builtin_popcountll(act01 ? a & wj : a ^ wj);
            if (NP > 1)
                tail[1][j] += __builtin_popcountll(act01 ? b & wj : b ^ wj);
        }
        if (act01) {
            tail[0][OB] += __builtin_popcountll(a);
            if (NP > 1)
                tail[1][OB] += __builtin_popcountll(b);
        }
    }
}

static inline int64_t hsum(__m256i v)
{
    const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

/* The direct binary conv: xp (N x H x W x Cw), wp (O x KH x KW x Cw) -> y, element (n, o, p) at
 * y[n sN + o sO + p sP], p = oh OW + ow. A (N x H x W) or NULL (no XNOR scale), bias or NULL. */
void bk_conv(const u64 *xp, int64_t N, int64_t C, int64_t H, int64_t W, const u64 *wp, int64_t O,
             int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int act01,
             const float *A, const float *alpha, const float *bias, float *y, int64_t sN,
             int64_t sO, int64_t sP, int threads)
{
    const int64_t Cw = (C + 63) / 64, OH = (H + 2 * ph - KH) / sh + 1, OW = (W + 2 * pw - KW) / sw + 1;
    const int64_t OHW = OH * OW, nt = (O + OBT - 1) / OBT, wrow = KH * KW * Cw;
    float *K = NULL;
    if (A) {
        K = malloc((size_t)(N * OHW) * sizeof(float));
        #pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t q = 0; q < N * OHW; q++) {
            const int64_t n = q / OHW, oh = q % OHW / OW, ow = q % OW;
            const int64_t i0 = oh * sh - ph, j0 = ow * sw - pw;
            int64_t klo, khi, llo, lhi;
            tap_range(i0, KH, H, &klo, &khi);
            tap_range(j0, KW, W, &llo, &lhi);
            float s = 0.0f;
            for (int64_t a = klo; a < khi; a++)
                for (int64_t b = llo; b < lhi; b++)
                    s += A[(n * H + i0 + a) * W + j0 + b];
            K[q] = s / (float)(KH * KW);
        }
    }
    #pragma omp parallel for collapse(2) schedule(dynamic) num_threads(threads)
    for (int64_t r = 0; r < N * OH; r++)
        for (int64_t t = 0; t < nt; t++) {
            const int64_t n = r / OH, oh = r % OH, i0 = oh * sh - ph;
            int64_t klo, khi;
            tap_range(i0, KH, H, &klo, &khi);
            for (int64_t o0 = t * OBT; o0 < imin(O, (t + 1) * OBT); o0 += OB) {
                const u64 *w[OB];
                for (int j = 0; j < OB; j++)
                    w[j] = wp + imin(o0 + j, O - 1) * wrow;
                for (int64_t ow = 0; ow < OW;) {
                    const int64_t j0 = ow * sw - pw;
                    int64_t llo, lhi;
                    tap_range(j0, KW, W, &llo, &lhi);
                    /* two neighbouring pixels whose kernel rows lie inside the image share
                     * the weight loads; others go one at a time over their in-bounds taps */
                    const int NP = (llo == 0 && lhi == KW && ow + 1 < OW && j0 + sw + KW <= W) ? 2 : 1;
                    __m256i acc[2][OB], px[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
                    int64_t tail[2][OB + 1] = {{0}};
                    for (int j = 0; j < OB; j++)
                        acc[0][j] = acc[1][j] = _mm256_setzero_si256();
                    const int64_t L = (lhi - llo) * Cw;
                    for (int64_t a = klo; a < khi; a++) {
                        const u64 *x0 = xp + ((n * H + i0 + a) * W + j0 + llo) * Cw;
                        const int64_t woff = (a * KW + llo) * Cw;
                        if (NP == 2)
                            act01 ? block(x0, x0 + sw * Cw, w, woff, L, 2, 1, acc, px, tail)
                                  : block(x0, x0 + sw * Cw, w, woff, L, 2, 0, acc, px, tail);
                        else
                            act01 ? block(x0, x0, w, woff, L, 1, 1, acc, px, tail)
                                  : block(x0, x0, w, woff, L, 1, 0, acc, px, tail);
                    }
                    const int64_t kvalid = C * (khi - klo) * (lhi - llo);
                    for (int q = 0; q < NP; q++) {
                        const int64_t p = oh * OW + ow + q;
                        const float k = K ? K[n * OHW + p] : 1.0f;
                        const int64_t pop_x = act01 ? hsum(px[q]) + tail[q][OB] : 0;
                        for (int j = 0; j < OB && o0 + j < O; j++) {
                            const int64_t o = o0 + j;
                            const int64_t pop = hsum(acc[q][j]) + tail[q][j];
                            const int64_t dot = act01 ? 2 * pop - pop_x : kvalid - 2 * pop;
                            y[n * sN + o * sO + p * sP] = (float)dot * alpha[o] * k + (bias ? bias[o] : 0.0f);
                        }
                    }
                    ow += NP;
                }
            }
        }
    free(K);
}
