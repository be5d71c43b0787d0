/* Packed-bit kernels for layers whose weights and inputs are both 1-bit (XNOR-Net, Rastegari et
 * al. 2016; BNN, Courbariaux, Hubara et al. 2016; DoReFa W1A1, Zhou et al. 2016).
 *
 * Plain C, no torch headers: binary.py builds it with gcc and calls it through ctypes.
 *
 * Layouts (uint64 words, bits padded with zeros):
 *   activations  xp[n][h][w][Cw]      (NHWC-bit, Cw = ceil(C / 64), bit b of word w = channel 64 w + b)
 *   channel layout (bk_conv): weights wp[o][kh][kw][Cw], the reduction runs tap by tap over Cw
 *     words, so C = 16 / 32 uses only 16 / 32 bits of each word.
 *   joint layout (bk_conv_joint, "im2col of bits"): per output pixel the kh kw C input bits of its
 *     receptive field are packed together (tap t = a kw + b, channel c at bit t C + c, Kw =
 *     ceil(kh kw C / 64) words; taps in the zero padding are 0 bits), weights wj[o][Kw] the same
 *     way (bk_joint_weights); each row's joint bits are built into a per-thread buffer and
 *     multiplied as a small binary GEMM, several pixels x output channels per register block.
 *     pm1 padding is exact: popcount(x XOR w) then counts w's bits at the padded taps, which are
 *     subtracted (a table per (row border pattern, column border pattern, o)). binary.py picks
 *     joint when C % 64 != 0 and C < 128 (override: LWB_BINARY_LAYOUT=channel|joint).
 * A linear layer is the conv of a 1 x batch image with a 1 x 1 kernel: N = 1, H = 1, W = batch.
 *
 * ISA dispatch: the kernels after "#else BK_TEMPLATE" are compiled twice by including this file
 * into itself: once for AVX2 (popcount by vpshufb nibble lookup; the file is built with
 * -march=haswell), once under #pragma GCC target("avx512f,avx512bw,avx512vpopcntdq") (vpopcntq,
 * 8 words per instruction, masked tails). The caller passes isa (1 = AVX-512, 0 = AVX2); binary.py
 * asks bk_avx512_supported() (__builtin_cpu_supports) and honours LWB_BINARY_ISA=avx2, so the .so
 * loads and runs on AVX2-only CPUs.
 *
 * Measured (2-core AMD EPYC with AVX-512 VPOPCNTDQ, 1 thread, median of interleaved ratios vs torch
 * FP32 oneDNN, load average 1.7-2.3 from other jobs, two runs): XNOR conv 3x3 256->256 14x14 batch
 * 64 2.6-3.1x (avx2) / 3.8-5.0x (avx512); linear 4096x4096 batch 64 6.1-7.2x / 15-16x; XNOR
 * ResNet-20 whole net, batch 256: 0.85-0.98x / 1.13-1.19x, batch 1: 1.1-1.2x / 1.3-1.4x (the
 * C = 16 layers, joint layout, ~15-20 ms each at batch 256, are
 * bound by building the joint rows and the scalar per-output epilogue, not by popcounts).
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
 * channels, popcounts by AVX2 nibble lookup (on this machine 1.3x faster than POPCNT per word) or
 * vpopcntq, OpenMP over (output rows x blocks of 32 output channels) with `threads` threads;
 * bk_conv_joint goes over output rows. Every output is computed by one thread from integers, so
 * any thread count (and either ISA, either layout) gives the same bits.
 */
#ifndef BK_TEMPLATE
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

/* The distinct in-bounds tap ranges [lo, hi) of the n output positions along one axis (stride s,
   padding p, kernel K, input size H): the ranges into lo[]/hi[], each position's index into id[];
   returns how many there are (at most 2 * pad + 1 border patterns plus the interior one). */
static int64_t border_patterns(int64_t n, int64_t s, int64_t p, int64_t K, int64_t H,
                               int64_t *lo, int64_t *hi, int32_t *id)
{
    int64_t count = 0;
    for (int64_t o = 0; o < n; o++) {
        int64_t a, b, r = 0;
        tap_range(o * s - p, K, H, &a, &b);
        while (r < count && (lo[r] != a || hi[r] != b))
            r++;
        if (r == count)
            lo[r] = a, hi[r] = b, count++;
        id[o] = (int32_t)r;
    }
    return count;
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

/* Everything one conv call needs, shared by the two layouts and the two ISAs. */
typedef struct {
    const u64 *xp, *wp, *nib; /* packed input, channel-layout weights, their nibble split */
    int64_t N, C, H, W, O, KH, KW, sh, sw, ph, pw, OH, OW, sN, sO, sP;
    int act01, threads;
    const float *K, *alpha, *bias;
    float *y;
    /* joint layout: Kw words per output pixel; weights transposed wT[i][Opad] (and their nibble
     * halves wTl, wTh); pm1 padding corrections corr[(rid[oh] ncp + cid[ow]) O + o] */
    int64_t Kw, Opad, ncp;
    const u64 *wT, *wTl, *wTh;
    const int32_t *corr, *rid, *cid;
} job;

/* d (zeroed) |= the C bits of s (zero above C) at bit offset off */
static inline void put_bits(u64 *d, int64_t off, const u64 *s, int64_t C)
{
    for (int64_t c = 0; c < C; c += 64) {
        const u64 v = s[c / 64];
        const int64_t o = off + c, wi = o >> 6, sh = o & 63;
        d[wi] |= v << sh;
        if (sh && sh + imin(64, C - c) > 64)
            d[wi + 1] |= v >> (64 - sh);
    }
}

/* The joint ("im2col of bits") row of output pixel (n, oh, ow): tap t = a KW + b, channel c at bit
 * t C + c; taps outside the image (zero padding) stay 0 bits. */
static inline void joint_row(const job *j, int64_t n, int64_t oh, int64_t ow, u64 *d)
{
    const int64_t i0 = oh * j->sh - j->ph, j0 = ow * j->sw - j->pw, Cw = (j->C + 63) / 64;
    int64_t klo, khi, llo, lhi;
    tap_range(i0, j->KH, j->H, &klo, &khi);
    tap_range(j0, j->KW, j->W, &llo, &lhi);
    if (Cw == 1) { /* one word per tap: no loop, no branch (d has a spare word past Kw) */
        for (int64_t a = klo; a < khi; a++) {
            const u64 *s = j->xp + (n * j->H + i0 + a) * j->W + j0;
            for (int64_t b = llo; b < lhi; b++) {
                const u64 v = s[b];
                const int64_t off = (a * j->KW + b) * j->C, wi = off >> 6, sh = off & 63;
                d[wi] |= v << sh;
                d[wi + 1] |= (v >> 1) >> (63 - sh); /* the bits past the word; 0 if none */
            }
        }
        return;
    }
    for (int64_t a = klo; a < khi; a++)
        for (int64_t b = llo; b < lhi; b++)
            put_bits(d, (a * j->KW + b) * j->C, j->xp + ((n * j->H + i0 + a) * j->W + j0 + b) * Cw, j->C);
}

#define BK_TEMPLATE 1
#define SFX(name) name##_avx2
#define ISA512 0
#include "binary_kernels.c" /* the template section below, once per ISA */
#undef SFX
#undef ISA512
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vpopcntdq")
#define SFX(name) name##_avx512
#define ISA512 1
#include "binary_kernels.c" /* the template section below, once per ISA */
#undef SFX
#undef ISA512
#pragma GCC pop_options
#undef BK_TEMPLATE

/* 1 if this CPU runs the AVX-512 VPOPCNTDQ kernels, else 0 (then only the AVX2 ones run) */
int bk_avx512_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vpopcntdq");
}

/* K[n, p] = (sum of A over the in-bounds taps of p) / (kh kw) */
static float *xnor_scale(const float *A, int64_t N, int64_t H, int64_t W, int64_t KH, int64_t KW,
                         int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t OH, int64_t OW, int threads)
{
    const int64_t OHW = OH * OW;
    float *K = malloc((size_t)(N * OHW) * sizeof(float));
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
    return K;
}

static job make_job(const u64 *xp, int64_t N, int64_t C, int64_t H, int64_t W, const u64 *wp, int64_t O,
                    int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int act01,
                    const float *alpha, const float *bias, float *y, int64_t sN, int64_t sO, int64_t sP,
                    int threads)
{
    job j;
    memset(&j, 0, sizeof j);
    j.xp = xp, j.wp = wp, j.N = N, j.C = C, j.H = H, j.W = W, j.O = O, j.KH = KH, j.KW = KW;
    j.sh = sh, j.sw = sw, j.ph = ph, j.pw = pw, j.act01 = act01, j.threads = threads;
    j.OH = (H + 2 * ph - KH) / sh + 1, j.OW = (W + 2 * pw - KW) / sw + 1;
    j.alpha = alpha, j.bias = bias, j.y = y, j.sN = sN, j.sO = sO, j.sP = sP;
    return j;
}

/* The direct binary conv in the channel layout: xp (N x H x W x Cw), wp (O x KH x KW x Cw) -> y,
 * element (n, o, p) at y[n sN + o sO + p sP], p = oh OW + ow. A (N x H x W) or NULL (no XNOR
 * scale), bias or NULL. isa: 1 = AVX-512 VPOPCNTDQ (only if bk_avx512_supported()), 0 = AVX2. */
void bk_conv(const u64 *xp, int64_t N, int64_t C, int64_t H, int64_t W, const u64 *wp, int64_t O,
             int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int act01,
             const float *A, const float *alpha, const float *bias, float *y, int64_t sN,
             int64_t sO, int64_t sP, int threads, int isa)
{
    job j = make_job(xp, N, C, H, W, wp, O, KH, KW, sh, sw, ph, pw, act01, alpha, bias, y, sN, sO, sP, threads);
    const int64_t Cw = (C + 63) / 64, wrow = KH * KW * Cw;
    float *K = A ? xnor_scale(A, N, H, W, KH, KW, sh, sw, ph, pw, j.OH, j.OW, threads) : NULL;
    u64 *nib = NULL;
    j.K = K;
    if (isa == 1) {
        conv_channel_avx512(&j);
    } else {
        nib = malloc((size_t)(2 * O * wrow) * sizeof(u64));
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < wrow; i++) {
                nib[2 * o * wrow + i] = wp[o * wrow + i] & 0x0F0F0F0F0F0F0F0FULL;
                nib[(2 * o + 1) * wrow + i] = (wp[o * wrow + i] >> 4) & 0x0F0F0F0F0F0F0F0FULL;
            }
        j.nib = nib;
        conv_channel_avx2(&j);
    }
    free(nib);
    free(K);
}

/* out[o][Kw] = the joint bit rows of the channel-layout weights wp (O x T taps x Cw): tap t,
 * channel c at bit t C + c, Kw = ceil(T C / 64). */
void bk_joint_weights(const u64 *wp, int64_t O, int64_t C, int64_t T, u64 *out)
{
    const int64_t Cw = (C + 63) / 64, Kw = (T * C + 63) / 64;
    for (int64_t o = 0; o < O; o++) {
        memset(out + o * Kw, 0, (size_t)Kw * sizeof(u64));
        for (int64_t t = 0; t < T; t++)
            put_bits(out + o * Kw, t * C, wp + (o * T + t) * Cw, C);
    }
}

/* The same conv in the joint layout: the reduction runs over (tap, channel) bits packed together
 * (joint_row), so C = 16 or 32 no longer wastes 3/4 or 1/2 of every word. xp and wp as for
 * bk_conv (channel layout); wj = bk_joint_weights(wp) (O x Kw). Zero padding: the input's bits
 * are 0 at out-of-bounds taps, so pm1's popcount(x XOR w) counts w's bits there; they are
 * subtracted exactly (corr, per (row pattern, column pattern, o)); the 01 encoding needs none. */
void bk_conv_joint(const u64 *xp, int64_t N, int64_t C, int64_t H, int64_t W, const u64 *wp,
                   const u64 *wj, int64_t O, int64_t KH, int64_t KW, int64_t sh, int64_t sw,
                   int64_t ph, int64_t pw, int act01, const float *A, const float *alpha,
                   const float *bias, float *y, int64_t sN, int64_t sO, int64_t sP, int threads, int isa)
{
    job j = make_job(xp, N, C, H, W, wp, O, KH, KW, sh, sw, ph, pw, act01, alpha, bias, y, sN, sO, sP, threads);
    const int64_t OH = j.OH, OW = j.OW, T = KH * KW, Cw = (C + 63) / 64;
    const int64_t Kw = (T * C + 63) / 64, Opad = (O + 7) / 8 * 8;
    j.Kw = Kw, j.Opad = Opad;
    float *K = A ? xnor_scale(A, N, H, W, KH, KW, sh, sw, ph, pw, OH, OW, threads) : NULL;
    j.K = K;
    u64 *wT = calloc((size_t)(3 * Kw * Opad), sizeof(u64));
    for (int64_t o = 0; o < O; o++)
        for (int64_t i = 0; i < Kw; i++) {
            const u64 v = wj[o * Kw + i];
            wT[i * Opad + o] = v;
            wT[(Kw + i) * Opad + o] = v & 0x0F0F0F0F0F0F0F0FULL;
            wT[(2 * Kw + i) * Opad + o] = (v >> 4) & 0x0F0F0F0F0F0F0F0FULL;
        }
    j.wT = wT, j.wTl = wT + Kw * Opad, j.wTh = wT + 2 * Kw * Opad;
    /* border patterns: rows by (klo, khi), columns by (llo, lhi) */
    int32_t *rid = malloc((size_t)(OH + OW) * sizeof(int32_t)), *cid = rid + OH;
    int64_t *rlo = malloc((size_t)(2 * (OH + OW)) * sizeof(int64_t)), *rhi = rlo + OH;
    int64_t *clo = rhi + OH, *chi = clo + OW, nrp = 0, ncp = 0;
    nrp = border_patterns(OH, sh, ph, KH, H, rlo, rhi, rid);
    ncp = border_patterns(OW, sw, pw, KW, W, clo, chi, cid);
    int32_t *corr = calloc((size_t)(nrp * ncp * O), sizeof(int32_t));
    if (!act01)
        for (int64_t r = 0; r < nrp; r++)
            for (int64_t c = 0; c < ncp; c++)
                for (int64_t o = 0; o < O; o++) {
                    int32_t s = 0;
                    for (int64_t a = 0; a < KH; a++)
                        for (int64_t b = 0; b < KW; b++)
                            if (a < rlo[r] || a >= rhi[r] || b < clo[c] || b >= chi[c])
                                for (int64_t i = 0; i < Cw; i++)
                                    s += __builtin_popcountll(wp[(o * T + a * KW + b) * Cw + i]);
                    corr[(r * ncp + c) * O + o] = s;
                }
    j.corr = corr, j.rid = rid, j.cid = cid, j.ncp = ncp;
    if (isa == 1)
        conv_joint_avx512(&j);
    else
        conv_joint_avx2(&j);
    free(corr);
    free(rlo);
    free(rid);
    free(wT);
    free(K);
}

#else /* BK_TEMPLATE: the kernels, compiled once per ISA (SFX names them, ISA512 picks) */

#if ISA512
/* AVX-512 VPOPCNTDQ: 8 words per vector, popcounts straight into 64-bit lanes, masked tails */
typedef struct {
    __m512i s[2][OB + 1];
} SFX(counts);

static inline __attribute__((always_inline)) void SFX(counts_init)(SFX(counts) *k)
{
    for (int q = 0; q < 2; q++)
        for (int j = 0; j <= OB; j++)
            k->s[q][j] = _mm512_setzero_si512();
}

static inline __attribute__((always_inline)) __m512i op512(__m512i a, __m512i b, const int act01)
{
    return act01 ? _mm512_and_si512(a, b) : _mm512_xor_si512(a, b);
}

static inline __attribute__((always_inline)) void
SFX(block)(const u64 *x0, const u64 *x1, const u64 *const *w, int64_t woff, int64_t L, const int NP,
           const int act01, SFX(counts) *k)
{
    for (int64_t i = 0; i < L; i += 8) {
        const __mmask8 m = L - i >= 8 ? 0xff : (__mmask8)((1u << (L - i)) - 1);
        const __m512i a = _mm512_maskz_loadu_epi64(m, x0 + i);
        const __m512i b = NP > 1 ? _mm512_maskz_loadu_epi64(m, x1 + i) : a;
        for (int j = 0; j < OB; j++) {
            const __m512i wv = _mm512_maskz_loadu_epi64(m, w[j] + woff + i);
            k->s[0][j] = _mm512_add_epi64(k->s[0][j], _mm512_popcnt_epi64(op512(a, wv, act01)));
            if (NP > 1)
                k->s[1][j] = _mm512_add_epi64(k->s[1][j], _mm512_popcnt_epi64(op512(b, wv, act01)));
        }
        if (act01) {
            k->s[0][OB] = _mm512_add_epi64(k->s[0][OB], _mm512_popcnt_epi64(a));
            if (NP > 1)
                k->s[1][OB] = _mm512_add_epi64(k->s[1][OB], _mm512_popcnt_epi64(b));
        }
    }
}

static inline __attribute__((always_inline)) void SFX(finish)(SFX(counts) *k, const int NP, const int act01)
{
    (void)k, (void)NP, (void)act01;
}

static inline __attribute__((always_inline)) void SFX(totals)(const SFX(counts) *k, int q, const int act01, int64_t *pop)
{
    for (int j = 0; j < OB + act01; j++)
        pop[j] = _mm512_reduce_add_epi64(k->s[q][j]);
}
#define BLOCK(x0, x1, w, wn, wrow, woff, L, NP, A01, k) SFX(block)(x0, x1, w, woff, L, NP, A01, k)
#else
typedef counts SFX(counts);
static inline __attribute__((always_inline)) void SFX(counts_init)(SFX(counts) *k) { counts_init(k); }
static inline __attribute__((always_inline)) void SFX(finish)(SFX(counts) *k, const int NP, const int act01)
{
    widen(k, NP, act01);
}
static inline __attribute__((always_inline)) void SFX(totals)(const SFX(counts) *k, int q, const int act01, int64_t *pop)
{
    totals(k, q, act01, pop);
}
#define BLOCK(x0, x1, w, wn, wrow, woff, L, NP, A01, k) block(x0, x1, w, wn, wrow, woff, L, NP, A01, k)
#endif

/* The channel-layout conv: blocked as 2 neighbouring pixels x OB output channels, OpenMP over
 * (output rows x blocks of OBT output channels). */
static void SFX(conv_channel)(const job *jb)
{
    const u64 *xp = jb->xp, *wp = jb->wp, *nib = jb->nib;
    const int64_t N = jb->N, C = jb->C, H = jb->H, W = jb->W, O = jb->O, KH = jb->KH, KW = jb->KW;
    const int64_t sh = jb->sh, sw = jb->sw, ph = jb->ph, pw = jb->pw, OH = jb->OH, OW = jb->OW;
    const int64_t sN = jb->sN, sO = jb->sO, sP = jb->sP;
    const int act01 = jb->act01;
    const float *K = jb->K, *alpha = jb->alpha, *bias = jb->bias;
    float *y = jb->y;
    const int64_t Cw = (C + 63) / 64, OHW = OH * OW, nt = (O + OBT - 1) / OBT, wrow = KH * KW * Cw;
    (void)nib;
    #pragma omp parallel for collapse(2) schedule(dynamic) num_threads(jb->threads)
    for (int64_t r = 0; r < N * OH; r++)
        for (int64_t t = 0; t < nt; t++) {
            const int64_t n = r / OH, oh = r % OH, i0 = oh * sh - ph;
            int64_t klo, khi;
            tap_range(i0, KH, H, &klo, &khi);
            for (int64_t o0 = t * OBT; o0 < imin(O, (t + 1) * OBT); o0 += OB) {
                const u64 *w[OB], *wn[OB];
                for (int j = 0; j < OB; j++) {
                    w[j] = wp + imin(o0 + j, O - 1) * wrow;
                    wn[j] = nib ? nib + imin(o0 + j, O - 1) * 2 * wrow : NULL;
                }
                (void)wn;
                for (int64_t ow = 0; ow < OW;) {
                    const int64_t j0 = ow * sw - pw;
                    int64_t llo, lhi;
                    tap_range(j0, KW, W, &llo, &lhi);
                    /* two neighbouring pixels whose kernel rows lie inside the image share
                     * the weight loads; others go one at a time over their in-bounds taps */
                    const int NP = (llo == 0 && lhi == KW && ow + 1 < OW && j0 + sw + KW <= W) ? 2 : 1;
                    SFX(counts) k;
                    SFX(counts_init)(&k);
                    const int64_t L = (lhi - llo) * Cw;
                    for (int64_t a = klo; a < khi; a++) {
                        const u64 *x0 = xp + ((n * H + i0 + a) * W + j0 + llo) * Cw;
                        const int64_t woff = (a * KW + llo) * Cw;
                        if (NP == 2)
                            act01 ? BLOCK(x0, x0 + sw * Cw, w, wn, wrow, woff, L, 2, 1, &k)
                                  : BLOCK(x0, x0 + sw * Cw, w, wn, wrow, woff, L, 2, 0, &k);
                        else
                            act01 ? BLOCK(x0, x0, w, wn, wrow, woff, L, 1, 1, &k)
                                  : BLOCK(x0, x0, w, wn, wrow, woff, L, 1, 0, &k);
                    }
                    NP == 2 ? (act01 ? SFX(finish)(&k, 2, 1) : SFX(finish)(&k, 2, 0))
                            : (act01 ? SFX(finish)(&k, 1, 1) : SFX(finish)(&k, 1, 0));
                    const int64_t kvalid = C * (khi - klo) * (lhi - llo);
                    for (int q = 0; q < NP; q++) {
                        const int64_t p = oh * OW + ow + q;
                        const float scale = K ? K[n * OHW + p] : 1.0f;
                        int64_t pop[OB + 1] = {0};
                        act01 ? SFX(totals)(&k, q, 1, pop) : SFX(totals)(&k, q, 0, pop);
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
}
#undef BLOCK

#define JP 4 /* output pixels per joint-layout register block */
#if ISA512
#define JO 8 /* output channels per vector */
/* pop[q][o - ob] for pixels x + q Kw (q < NP) against output channels ob .. ob + 7 */
static inline __attribute__((always_inline)) void
SFX(joint_block)(const job *jb, const u64 *x, int64_t ob, const int NP, const int act01, int64_t pop[JP][JO])
{
    __m512i acc[JP];
    for (int q = 0; q < NP; q++)
        acc[q] = _mm512_setzero_si512();
    const int64_t Kw = jb->Kw, Opad = jb->Opad;
    for (int64_t i = 0; i < Kw; i++) {
        const __m512i w = _mm512_loadu_si512((const void *)(jb->wT + i * Opad + ob));
        for (int q = 0; q < NP; q++)
            acc[q] = _mm512_add_epi64(acc[q], _mm512_popcnt_epi64(op512(_mm512_set1_epi64((long long)x[q * Kw + i]), w, act01)));
    }
    for (int q = 0; q < NP; q++)
        _mm512_storeu_si512((void *)pop[q], acc[q]);
}
#else
#define JO 4
static inline __attribute__((always_inline)) void
SFX(joint_block)(const job *jb, const u64 *x, int64_t ob, const int NP, const int act01, int64_t pop[JP][JO])
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const u64 m4 = 0x0F0F0F0F0F0F0F0FULL;
    __m256i c[JP], s[JP];
    for (int q = 0; q < NP; q++)
        c[q] = s[q] = _mm256_setzero_si256();
    const int64_t Kw = jb->Kw, Opad = jb->Opad;
    int nv = 0;
    for (int64_t i = 0; i < Kw; i++) {
        if (nv == 31) {
            for (int q = 0; q < NP; q++) {
                s[q] = _mm256_add_epi64(s[q], _mm256_sad_epu8(c[q], _mm256_setzero_si256()));
                c[q] = _mm256_setzero_si256();
            }
            nv = 0;
        }
        nv++;
        const __m256i wl = _mm256_loadu_si256((const __m256i *)(jb->wTl + i * Opad + ob));
        const __m256i wh = _mm256_loadu_si256((const __m256i *)(jb->wTh + i * Opad + ob));
        for (int q = 0; q < NP; q++) {
            const u64 v = x[q * Kw + i];
            const __m256i xl = _mm256_set1_epi64x((long long)(v & m4)), xh = _mm256_set1_epi64x((long long)((v >> 4) & m4));
            c[q] = _mm256_add_epi8(c[q], _mm256_add_epi8(_mm256_shuffle_epi8(lut, op(xl, wl, act01)),
                                                         _mm256_shuffle_epi8(lut, op(xh, wh, act01))));
        }
    }
    for (int q = 0; q < NP; q++) {
        s[q] = _mm256_add_epi64(s[q], _mm256_sad_epu8(c[q], _mm256_setzero_si256()));
        _mm256_storeu_si256((__m256i *)pop[q], s[q]);
    }
}
#endif

/* NP output pixels (ow .. ow + NP - 1 of row (n, oh)) whose joint rows are x, all channels */
static inline __attribute__((always_inline)) void
SFX(joint_pixels)(const job *jb, const u64 *x, int64_t n, int64_t oh, int64_t ow, const int NP, const int act01)
{
    const int64_t O = jb->O, Kw = jb->Kw, OHW = jb->OH * jb->OW;
    int64_t popx[JP] = {0}, kvalid[JP] = {0};
    const int32_t *corr[JP];
    for (int q = 0; q < NP; q++) {
        if (act01) {
            for (int64_t i = 0; i < Kw; i++)
                popx[q] += __builtin_popcountll(x[q * Kw + i]);
        } else {
            int64_t klo, khi, llo, lhi;
            tap_range(oh * jb->sh - jb->ph, jb->KH, jb->H, &klo, &khi);
            tap_range((ow + q) * jb->sw - jb->pw, jb->KW, jb->W, &llo, &lhi);
            kvalid[q] = jb->C * (khi - klo) * (lhi - llo);
            corr[q] = jb->corr + (jb->rid[oh] * jb->ncp + jb->cid[ow + q]) * O;
        }
    }
    for (int64_t ob = 0; ob < O; ob += JO) {
        int64_t pop[JP][JO];
        SFX(joint_block)(jb, x, ob, NP, act01, pop);
        for (int q = 0; q < NP; q++) {
            const int64_t p = oh * jb->OW + ow + q;
            const float scale = jb->K ? jb->K[n * OHW + p] : 1.0f;
            float *yp = jb->y + n * jb->sN + p * jb->sP;
            for (int j = 0; j < JO && ob + j < O; j++) {
                const int64_t o = ob + j;
                const int64_t dot = act01 ? 2 * pop[q][j] - popx[q] : kvalid[q] - 2 * (pop[q][j] - corr[q][o]);
                yp[o * jb->sO] = (float)dot * jb->alpha[o] * scale + (jb->bias ? jb->bias[o] : 0.0f);
            }
        }
    }
}

/* The joint-layout conv: OpenMP over output rows; each row's joint bits built once into a
 * per-thread buffer (OW x Kw words), then JP pixels x JO output channels per register block. */
static void SFX(conv_joint)(const job *jb)
{
    const int64_t OW = jb->OW, Kw = jb->Kw;
    #pragma omp parallel num_threads(jb->threads)
    {
        u64 *buf = malloc((size_t)(OW * Kw + 1) * sizeof(u64));
        #pragma omp for schedule(dynamic)
        for (int64_t r = 0; r < jb->N * jb->OH; r++) {
            const int64_t n = r / jb->OH, oh = r % jb->OH;
            memset(buf, 0, (size_t)(OW * Kw + 1) * sizeof(u64));
            for (int64_t ow = 0; ow < OW; ow++)
                joint_row(jb, n, oh, ow, buf + ow * Kw);
            int64_t ow = 0;
            for (; ow + JP <= OW; ow += JP)
                jb->act01 ? SFX(joint_pixels)(jb, buf + ow * Kw, n, oh, ow, JP, 1)
                          : SFX(joint_pixels)(jb, buf + ow * Kw, n, oh, ow, JP, 0);
            for (; ow < OW; ow++)
                jb->act01 ? SFX(joint_pixels)(jb, buf + ow * Kw, n, oh, ow, 1, 1)
                          : SFX(joint_pixels)(jb, buf + ow * Kw, n, oh, ow, 1, 0);
        }
        free(buf);
    }
}
#undef JO
#undef JP

#endif /* BK_TEMPLATE */
