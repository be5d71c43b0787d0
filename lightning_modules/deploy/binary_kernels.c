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
 *
 * bk_pack binarises and packs a float input in one pass (computing A on the way); bk_conv is a
 * direct convolution over the in-bounds taps, blocked as 2 neighbouring pixels x 4 output
 * channels, popcounts by AVX2 nibble lookup (on this machine 1.3x faster than POPCNT per word),
 * OpenMP over (output rows x blocks of 32 output channels) with `threads` threads. Every output
 * is computed by one thread from integers, so any thread count gives the same bits.
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

/* x (C x P at strides sc = 1, sp) -> out[p][Cw], A[p]: channels contiguous (a linear layer's
 * input), 8 channels per compare + movemask */
static void pack_rows(const float *x, int64_t C, int64_t P, int64_t sp, int act01, u64 *out, float *A)
{
    const int64_t Cw = (C + 63) / 64;
    for (int64_t p = 0; p < P; p++) {
        const float *xs = x + p * sp;
        u64 *o = out + p * Cw;
        __m256 av = _mm256_setzero_ps();
        float as = 0.0f;
        memset(o, 0, (size_t)Cw * sizeof(u64));
        int64_t c = 0;
        for (; c + 8 <= C; c += 8)
            o[c / 64] |= bits8(xs + c, act01, &av) << (c % 64);
        for (; c < C; c++)
            o[c / 64] |= bit1(xs[c], act01, &as) << (c % 64);
        if (A)
            A[p] = (hsum_ps(av) + as) / (float)C;
    }
}

/* x (C x P at strides sc, sp) -> out[p][Cw], A[p]: channel planes (NCHW, sp = 1). One sequential
 * pass over x gives each channel's pixel bits, 8 pixels a byte (rows[c][t]); 8 x 8 bit
 * transposes then turn 8 channels x 8 pixels into the pixels' channel bytes. */
static void pack_planes(const float *x, int64_t C, int64_t P, int64_t sc, int64_t sp, int act01,
                        u64 *out, float *A)
{
    const int64_t Cw = (C + 63) / 64, nt = (P + 7) / 8;
    uint8_t *rows = malloc((size_t)(C * nt));
    float *as = calloc((size_t)(nt * 8), sizeof(float));
    for (int64_t c = 0; c < C; c++) {
        const float *xs = x + c * sc;
        for (int64_t t = 0; t < nt; t++) {
            const int64_t nq = imin(8, P - 8 * t);
            if (nq == 8 && sp == 1) {
                __m256 av = _mm256_loadu_ps(as + 8 * t);
                rows[c * nt + t] = (uint8_t)bits8(xs + 8 * t, act01, &av);
                _mm256_storeu_ps(as + 8 * t, av);
            } else {
                rows[c * nt + t] = (uint8_t)bitsn(xs + 8 * t * sp, sp, nq, act01, as + 8 * t);
            }
        }
    }
    for (int64_t t = 0; t < nt; t++) {
        const int64_t nq = imin(8, P - 8 * t);
        for (int64_t cw = 0; cw < Cw; cw++) {
            u64 wd[8] = {0};
            for (int64_t c8 = cw * 64; c8 < imin(C, cw * 64 + 64); c8 += 8) {
                u64 m = 0; /* byte i: the 8 pixels' bits of channel c8 + i */
                for (int64_t i = 0; i < imin(8, C - c8); i++)
                    m |= (u64)rows[(c8 + i) * nt + t] << (8 * i);
                const u64 cols = transpose8(m); /* byte q: pixel q's bits of channels c8.. */
                for (int q = 0; q < 8; q++)
                    wd[q] |= ((cols >> (8 * q)) & 0xff) << (c8 % 64);
            }
            for (int64_t q = 0; q < nq; q++)
                out[(8 * t + q) * Cw + cw] = wd[q];
        }
    }
    if (A)
        for (int64_t p = 0; p < P; p++)
            A[p] = as[p] / (float)C;
    free(rows);
    free(as);
}

/* Binarise and pack x (N x C x P, element strides sn, sc, sp) into out[n][p][Cw] (bits padded
 * with zeros to Cw = ceil(C / 64) words); with A, also A[n][p] = mean_c |x|. One pass over x. */
void bk_pack(const float *x, int64_t N, int64_t C, int64_t P, int64_t sn, int64_t sc, int64_t sp,
             int act01, u64 *out, float *A, int threads)
{
    const int64_t Cw = (C + 63) / 64;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        if (sc == 1)
            pack_rows(x + n * sn, C, P, sp, act01, out + n * P * Cw, A ? A + n * P : NULL);
        else
            pack_planes(x + n * sn, C, P, sc, sp, act01, out + n * P * Cw, A ? A + n * P : NULL);
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

static inline __m256i op(__m256i a, __m256i b, const int act01)
{
    return act01 ? _mm256_and_si256(a, b) : _mm256_xor_si256(a, b);
}

/* Popcount accumulators of NP pixels x OB output channels; index OB counts the pixel's own
 * bits (popcount(x), needed for the 01 encoding). Byte counts (at most 8 per vector) add up in
 * c for up to 31 vectors, then vpsadbw widens them into the 64-bit lanes of s; the words past
 * the last full vector of a segment are counted with POPCNT into tail. */
typedef struct {
    __m256i c[2][OB + 1], s[2][OB + 1];
    int64_t tail[2][OB + 1];
    int nv;
} counts;

static inline __attribute__((always_inline)) void counts_init(counts *k)
{
    for (int q = 0; q < 2; q++)
        for (int j = 0; j <= OB; j++) {
            k->c[q][j] = k->s[q][j] = _mm256_setzero_si256();
            k->tail[q][j] = 0;
        }
    k->nv = 0;
}

static inline __attribute__((always_inline)) void widen(counts *k, const int NP, const int act01)
{
    for (int q = 0; q < NP; q++)
        for (int j = 0; j < OB + act01; j++) {
            k->s[q][j] = _mm256_add_epi64(k->s[q][j], _mm256_sad_epu8(k->c[q][j], _mm256_setzero_si256()));
            k->c[q][j] = _mm256_setzero_si256();
        }
    k->nv = 0;
}

/* pop[j] = the totals of pixel q (j <= OB): the four 64-bit lanes of s[q][j] summed, plus tail */
static inline __attribute__((always_inline)) void totals(const counts *k, int q, const int act01, int64_t *pop)
{
    int64_t out[4];
    for (int j = 0; j < OB; j += 4) {
        const __m256i *v = &k->s[q][j];
        const __m256i t0 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[0], v[1]), _mm256_unpackhi_epi64(v[0], v[1]));
        const __m256i t1 = _mm256_add_epi64(_mm256_unpacklo_epi64(v[2], v[3]), _mm256_unpackhi_epi64(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)out, _mm256_add_epi64(_mm256_permute2x128_si256(t0, t1, 0x20),
                                                             _mm256_permute2x128_si256(t0, t1, 0x31)));
        for (int i = 0; i < 4; i++)
            pop[j + i] = out[i] + k->tail[q][j + i];
    }
    if (act01) {
        const __m256i v = k->s[q][OB];
        const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        pop[OB] = _mm_cvtsi128_si64(h) + _mm_extract_epi64(h, 1) + k->tail[q][OB];
    }
}

/* counts of op(x_q[i], w_j[woff + i]) for i < L, NP pixels x_q, OB weight rows w_j; op = AND
 * for act01 (plus popcount(x_q)), else XOR. Four words per AVX2 vector, popcount by nibble
 * lookup with vpshufb (Mula, Kurz, Lemire 2018): op works nibble-wise, so the weights come split
 * into their low and high nibbles (wn[j]: wrow low-nibble words, then wrow high-nibble words)
 * and each input vector is split once for the OB weight rows. */
static inline __attribute__((always_inline)) void
block(const u64 *x0, const u64 *x1, const u64 *const *w, const u64 *const *wn, int64_t wrow,
      int64_t woff, int64_t L, const int NP, const int act01, counts *k)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const int64_t L4 = L & ~(int64_t)3;
    for (int64_t i = 0; i < L4; i += 4) {
        if (k->nv == 31)
            widen(k, NP, act01);
        k->nv++;
        const __m256i a = _mm256_loadu_si256((const __m256i *)(x0 + i));
        const __m256i b = NP > 1 ? _mm256_loadu_si256((const __m256i *)(x1 + i)) : a;
        const __m256i al = _mm256_and_si256(a, m4), ah = _mm256_and_si256(_mm256_srli_epi16(a, 4), m4);
        const __m256i bl = _mm256_and_si256(b, m4), bh = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
        for (int j = 0; j < OB; j++) {
            const __m256i wl = _mm256_loadu_si256((const __m256i *)(wn[j] + woff + i));
            const __m256i wh = _mm256_loadu_si256((const __m256i *)(wn[j] + wrow + woff + i));
            k->c[0][j] = _mm256_add_epi8(k->c[0][j], _mm256_add_epi8(_mm256_shuffle_epi8(lut, op(al, wl, act01)),
                                                                     _mm256_shuffle_epi8(lut, op(ah, wh, act01))));
            if (NP > 1)
                k->c[1][j] = _mm256_add_epi8(k->c[1][j], _mm256_add_epi8(_mm256_shuffle_epi8(lut, op(bl, wl, act01)),
                                                                         _mm256_shuffle_epi8(lut, op(bh, wh, act01))));
        }
        if (act01) {
            k->c[0][OB] = _mm256_add_epi8(k->c[0][OB], _mm256_add_epi8(_mm256_shuffle_epi8(lut, al),
                                                                       _mm256_shuffle_epi8(lut, ah)));
            if (NP > 1)
                k->c[1][OB] = _mm256_add_epi8(k->c[1][OB], _mm256_add_epi8(_mm256_shuffle_epi8(lut, bl),
                                                                           _mm256_shuffle_epi8(lut, bh)));
        }
    }
    for (int64_t i = L4; i < L; i++) {
        const u64 a = x0[i], b = NP > 1 ? x1[i] : 0;
        for (int j = 0; j < OB; j++) {
            const u64 wj = w[j][woff + i];
            k->tail[0][j] += __builtin_popcountll(act01 ? a & wj : a ^ wj);
            if (NP > 1)
                k->tail[1][j] += __builtin_popcountll(act01 ? b & wj : b ^ wj);
        }
        if (act01) {
            k->tail[0][OB] += __builtin_popcountll(a);
            if (NP > 1)
                k->tail[1][OB] += __builtin_popcountll(b);
        }
    }
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
    u64 *nib = malloc((size_t)(2 * O * wrow) * sizeof(u64));
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t o = 0; o < O; o++)
        for (int64_t i = 0; i < wrow; i++) {
            nib[2 * o * wrow + i] = wp[o * wrow + i] & 0x0F0F0F0F0F0F0F0FULL;
            nib[(2 * o + 1) * wrow + i] = (wp[o * wrow + i] >> 4) & 0x0F0F0F0F0F0F0F0FULL;
        }
    #pragma omp parallel for collapse(2) schedule(dynamic) num_threads(threads)
    for (int64_t r = 0; r < N * OH; r++)
        for (int64_t t = 0; t < nt; t++) {
            const int64_t n = r / OH, oh = r % OH, i0 = oh * sh - ph;
            int64_t klo, khi;
            tap_range(i0, KH, H, &klo, &khi);
            for (int64_t o0 = t * OBT; o0 < imin(O, (t + 1) * OBT); o0 += OB) {
                const u64 *w[OB], *wn[OB];
                for (int j = 0; j < OB; j++) {
                    w[j] = wp + imin(o0 + j, O - 1) * wrow;
                    wn[j] = nib + imin(o0 + j, O - 1) * 2 * wrow;
                }
                for (int64_t ow = 0; ow < OW;) {
                    const int64_t j0 = ow * sw - pw;
                    int64_t llo, lhi;
                    tap_range(j0, KW, W, &llo, &lhi);
                    /* two neighbouring pixels whose kernel rows lie inside the image share
                     * the weight loads; others go one at a time over their in-bounds taps */
                    const int NP = (llo == 0 && lhi == KW && ow + 1 < OW && j0 + sw + KW <= W) ? 2 : 1;
                    counts k;
                    counts_init(&k);
                    const int64_t L = (lhi - llo) * Cw;
                    for (int64_t a = klo; a < khi; a++) {
                        const u64 *x0 = xp + ((n * H + i0 + a) * W + j0 + llo) * Cw;
                        const int64_t woff = (a * KW + llo) * Cw;
                        if (NP == 2)
                            act01 ? block(x0, x0 + sw * Cw, w, wn, wrow, woff, L, 2, 1, &k)
                                  : block(x0, x0 + sw * Cw, w, wn, wrow, woff, L, 2, 0, &k);
                        else
                            act01 ? block(x0, x0, w, wn, wrow, woff, L, 1, 1, &k)
                                  : block(x0, x0, w, wn, wrow, woff, L, 1, 0, &k);
                    }
                    NP == 2 ? (act01 ? widen(&k, 2, 1) : widen(&k, 2, 0))
                            : (act01 ? widen(&k, 1, 1) : widen(&k, 1, 0));
                    const int64_t kvalid = C * (khi - klo) * (lhi - llo);
                    for (int q = 0; q < NP; q++) {
                        const int64_t p = oh * OW + ow + q;
                        const float scale = K ? K[n * OHW + p] : 1.0f;
                        int64_t pop[OB + 1] = {0};
                        act01 ? totals(&k, q, 1, pop) : totals(&k, q, 0, pop);
                        for (int j = 0; j < OB && o0 + j < O; j++) {
                            const int64_t o = o0 + j;
                            const int64_t dot = act01 ? 2 * pop[j] - pop[OB] : kvalid - 2 * pop[j];
                            y[n * sN + o * sO + p * sP] = (float)dot * alpha[o] * scale + (bias ? bias[o] : 0.0f);
                        }
                    }
                    ow += NP;
                }
            }
        }
    free(nib);
    free(K);
}
