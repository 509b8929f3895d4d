/* Presso int8 kernels for Cortex-M (C99, no heap, no float at run time).
 *
 * Every kernel takes int8 tensors in ONNX layout (NCHW) and compile-time parameters:
 * int32 biases in the accumulator's scale, and requantization multipliers m with right
 * shifts s (real = m * 2^-s). The code generator copies the sections it uses into model.c;
 * a section starts at a line "@kernel NAME" inside a comment and ends at the next one.
 * Signed right shifts are arithmetic (GCC and Clang on every target Presso builds for).
 */

/* @kernel requant */
static int8_t presso_requant(int32_t acc, int32_t mult, int32_t shift, int32_t zp, int32_t lo, int32_t hi)
{
    int64_t v = (((int64_t)acc * mult + ((int64_t)1 << (shift - 1))) >> shift) + zp;
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

/* @kernel conv */
/* The window of each output is clipped to the input once (ky/kx ranges), not per tap;
 * padding is real zero, i.e. the input zero point, so clipped taps add nothing. */
static void presso_conv(const int8_t *x, int8_t *y, const int8_t *w, const int32_t *bias,
                        const int32_t *mult, const int32_t *shift, int C, int H, int W, int M, int OH,
                        int OW, int KH, int KW, int SH, int SW, int PT, int PL, int DH, int DW, int G,
                        int32_t zx, int32_t zy, int32_t lo, int32_t hi)
{
    const int cpg = C / G, mpg = M / G, ksize = KH * KW;
    int m, oy, ox, c, ky, kx;
    for (m = 0; m < M; ++m) {
        const int8_t *wm = w + (long)m * cpg * ksize;
        const int8_t *xg = x + (long)(m / mpg) * cpg * H * W;
        for (oy = 0; oy < OH; ++oy) {
            const int iy0 = oy * SH - PT;
            const int ky0 = iy0 < 0 ? (-iy0 + DH - 1) / DH : 0;
            int ky1 = H - iy0 <= 0 ? 0 : (H - iy0 + DH - 1) / DH;
            if (ky1 > KH) ky1 = KH;
            for (ox = 0; ox < OW; ++ox) {
                const int ix0 = ox * SW - PL;
                const int kx0 = ix0 < 0 ? (-ix0 + DW - 1) / DW : 0;
                int kx1 = W - ix0 <= 0 ? 0 : (W - ix0 + DW - 1) / DW;
                int32_t acc = bias[m];
                if (kx1 > KW) kx1 = KW;
                for (c = 0; c < cpg; ++c) {
                    const int8_t *wc = wm + c * ksize;
                    for (ky = ky0; ky < ky1; ++ky) {
                        /* offsets stay integers: a row start left of the window may be before x */
                        const long row = (long)c * H * W + (long)(iy0 + ky * DH) * W + ix0;
                        const int8_t *wr = wc + ky * KW;
                        for (kx = kx0; kx < kx1; ++kx) acc += ((int32_t)xg[row + kx * DW] - zx) * wr[kx];
                    }
                }
                y[((long)m * OH + oy) * OW + ox] = presso_requant(acc, mult[m], shift[m], zy, lo, hi);
            }
        }
    }
}

/* @kernel conv1x1 */
/* 1x1 convolution, stride 1, no padding, one group: a [M x C] by [C x P] product; the input
 * zero point is folded into the bias. Four output channels per pass share each input load. */
static void presso_conv1x1(const int8_t *x, int8_t *y, const int8_t *w, const int32_t *bias,
                           const int32_t *mult, const int32_t *shift, int C, int P, int M,
                           int32_t zy, int32_t lo, int32_t hi)
{
    const int M4 = M - M % 4;
    int m, p, c;
    for (m = 0; m < M4; m += 4) {
        const int8_t *w0 = w + (long)m * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
        for (p = 0; p < P; ++p) {
            int32_t a0 = bias[m], a1 = bias[m + 1], a2 = bias[m + 2], a3 = bias[m + 3];
            const int8_t *xp = x + p;
            for (c = 0; c < C; ++c) {
                const int32_t v = xp[(long)c * P];
                a0 += v * w0[c];
                a1 += v * w1[c];
                a2 += v * w2[c];
                a3 += v * w3[c];
            }
            y[(long)m * P + p] = presso_requant(a0, mult[m], shift[m], zy, lo, hi);
            y[(long)(m + 1) * P + p] = presso_requant(a1, mult[m + 1], shift[m + 1], zy, lo, hi);
            y[(long)(m + 2) * P + p] = presso_requant(a2, mult[m + 2], shift[m + 2], zy, lo, hi);
            y[(long)(m + 3) * P + p] = presso_requant(a3, mult[m + 3], shift[m + 3], zy, lo, hi);
        }
    }
    for (m = M4; m < M; ++m) { /* the last M % 4 channels */
        for (p = 0; p < P; ++p) {
            int32_t acc = bias[m];
            for (c = 0; c < C; ++c) acc += (int32_t)x[(long)c * P + p] * w[(long)m * C + c];
            y[(long)m * P + p] = presso_requant(acc, mult[m], shift[m], zy, lo, hi);
        }
    }
}

/* @kernel dense */
/* y[r, n] = requant(bias[n] + sum_k a[r, k] * w[n, k]); the input zero point is in bias. */
static void presso_dense(const int8_t *a, int8_t *y, const int8_t *w, const int32_t *bias,
                         const int32_t *mult, const int32_t *shift, int rows, int K, int N,
                         int32_t zy, int32_t lo, int32_t hi)
{
    int r, n, k;
    for (r = 0; r < rows; ++r) {
        const int8_t *ar = a + (long)r * K;
        for (n = 0; n < N; ++n) {
            const int8_t *wn = w + (long)n * K;
            int32_t acc = bias[n];
            for (k = 0; k < K; ++k) acc += (int32_t)ar[k] * wn[k];
            y[(long)r * N + n] = presso_requant(acc, mult[n], shift[n], zy, lo, hi);
        }
    }
}

/* @kernel matmul */
/* Both operands are activations: y[b] = (a[b] - za) x (bm[b] - zb), [M x K] x [K x N]. */
static void presso_matmul(const int8_t *a, const int8_t *bm, int8_t *y, int batch, int b_step, int M,
                          int K, int N, int32_t za, int32_t zb, int32_t mult, int32_t shift, int32_t zy,
                          int32_t lo, int32_t hi)
{
    int t, i, j, k;
    for (t = 0; t < batch; ++t) {
        const int8_t *at = a + (long)t * M * K, *bt = bm + (long)t * b_step;
        int8_t *yt = y + (long)t * M * N;
        for (i = 0; i < M; ++i) {
            for (j = 0; j < N; ++j) {
                int32_t acc = 0;
                for (k = 0; k < K; ++k) acc += ((int32_t)at[i * K + k] - za) * ((int32_t)bt[k * N + j] - zb);
                yt[i * N + j] = presso_requant(acc, mult, shift, zy, lo, hi);
            }
        }
    }
}

/* @kernel add */
/* y = clamp(((a - za) * ma + (b - zb) * mb + round) >> shift + zy), broadcast over 4 axes
 * (stride 0 on a broadcast axis). Sub is an Add with a negative mb. */
static void presso_add(const int8_t *a, const int8_t *b, int8_t *y, const int32_t *dims,
                       const int32_t *as, const int32_t *bs, int32_t za, int32_t zb, int32_t ma,
                       int32_t mb, int32_t shift, int32_t zy, int32_t lo, int32_t hi)
{
    const int64_t round = (int64_t)1 << (shift - 1);
    int i0, i1, i2, i3;
    for (i0 = 0; i0 < dims[0]; ++i0)
        for (i1 = 0; i1 < dims[1]; ++i1)
            for (i2 = 0; i2 < dims[2]; ++i2) {
                const int8_t *ap = a + i0 * as[0] + i1 * as[1] + i2 * as[2];
                const int8_t *bp = b + i0 * bs[0] + i1 * bs[1] + i2 * bs[2];
                for (i3 = 0; i3 < dims[3]; ++i3) {
                    const int64_t v = ((((int64_t)ap[i3 * as[3]] - za) * ma + ((int64_t)bp[i3 * bs[3]] - zb) * mb
                                        + round) >> shift) + zy;
                    *y++ = (int8_t)(v < lo ? lo : (v > hi ? hi : v));
                }
            }
}

/* @kernel mul */
static void presso_mul(const int8_t *a, const int8_t *b, int8_t *y, const int32_t *dims,
                       const int32_t *as, const int32_t *bs, int32_t za, int32_t zb, int32_t mult,
                       int32_t shift, int32_t zy, int32_t lo, int32_t hi)
{
    int i0, i1, i2, i3;
    for (i0 = 0; i0 < dims[0]; ++i0)
        for (i1 = 0; i1 < dims[1]; ++i1)
            for (i2 = 0; i2 < dims[2]; ++i2) {
                const int8_t *ap = a + i0 * as[0] + i1 * as[1] + i2 * as[2];
                const int8_t *bp = b + i0 * bs[0] + i1 * bs[1] + i2 * bs[2];
                if (bs[3] == 0 && as[3] == 1) { /* a row times one value (an SE gate, a scale) */
                    const int32_t bv = (int32_t)*bp - zb;
                    for (i3 = 0; i3 < dims[3]; ++i3)
                        *y++ = presso_requant(((int32_t)ap[i3] - za) * bv, mult, shift, zy, lo, hi);
                    continue;
                }
                for (i3 = 0; i3 < dims[3]; ++i3) {
                    const int32_t acc = ((int32_t)ap[i3 * as[3]] - za) * ((int32_t)bp[i3 * bs[3]] - zb);
                    *y++ = presso_requant(acc, mult, shift, zy, lo, hi);
                }
            }
}

/* @kernel lut */
static void presso_lut(const int8_t *x, int8_t *y, int n, const int8_t *table)
{
    int i;
    for (i = 0; i < n; ++i) y[i] = table[(int32_t)x[i] + 128];
}

/* @kernel mean */
/* Mean over the trailing `count` values of each of `outer` rows (GlobalAveragePool, ReduceMean). */
static void presso_mean(const int8_t *x, int8_t *y, int outer, int count, int32_t zx, int32_t mult,
                        int32_t shift, int32_t zy, int32_t lo, int32_t hi)
{
    int o, i;
    for (o = 0; o < outer; ++o) {
        int32_t acc = 0;
        for (i = 0; i < count; ++i) acc += x[(long)o * count + i];
        acc -= zx * count;
        y[o] = presso_requant(acc, mult, shift, zy, lo, hi);
    }
}

/* @kernel avgpool */
/* Average pool; mult/shift are indexed by the number of values averaged minus one. */
static void presso_avgpool(const int8_t *x, int8_t *y, int C, int H, int W, int OH, int OW, int KH,
                           int KW, int SH, int SW, int PT, int PL, int include_pad, int32_t zx,
                           const int32_t *mult, const int32_t *shift, int32_t zy, int32_t lo, int32_t hi)
{
    int c, oy, ox, ky, kx;
    for (c = 0; c < C; ++c)
        for (oy = 0; oy < OH; ++oy)
            for (ox = 0; ox < OW; ++ox) {
                int32_t acc = 0;
                int count = 0;
                for (ky = 0; ky < KH; ++ky) {
                    const int iy = oy * SH - PT + ky;
                    if (iy < 0 || iy >= H) continue;
                    for (kx = 0; kx < KW; ++kx) {
                        const int ix = ox * SW - PL + kx;
                        if (ix < 0 || ix >= W) continue;
                        acc += (int32_t)x[((long)c * H + iy) * W + ix] - zx;
                        ++count;
                    }
                }
                if (include_pad) count = KH * KW;
                if (count == 0) count = 1;
                *y++ = presso_requant(acc, mult[count - 1], shift[count - 1], zy, lo, hi);
            }
}

/* @kernel maxpool */
static void presso_maxpool(const int8_t *x, int8_t *y, int C, int H, int W, int OH, int OW, int KH,
                           int KW, int SH, int SW, int PT, int PL)
{
    int c, oy, ox, ky, kx;
    for (c = 0; c < C; ++c)
        for (oy = 0; oy < OH; ++oy)
            for (ox = 0; ox < OW; ++ox) {
                int8_t best = -128;
                for (ky = 0; ky < KH; ++ky) {
                    const int iy = oy * SH - PT + ky;
                    if (iy < 0 || iy >= H) continue;
                    for (kx = 0; kx < KW; ++kx) {
                        const int ix = ox * SW - PL + kx;
                        int8_t v;
                        if (ix < 0 || ix >= W) continue;
                        v = x[((long)c * H + iy) * W + ix];
                        if (v > best) best = v;
                    }
                }
                *y++ = best;
            }
}

/* @kernel softmax */
/* Softmax over the last axis: exp(s * (x - max)) from a Q20 table of the 256 possible
 * differences, summed in int64; y = zy + e / sum / s_y with 1/s_y = mult * 2^-shift, via one
 * reciprocal per row. */
static void presso_softmax(const int8_t *x, int8_t *y, int rows, int length, const int32_t *table,
                           int32_t mult, int32_t shift, int32_t zy)
{
    const int total = 30 + shift;
    int r, i;
    for (r = 0; r < rows; ++r) {
        const int8_t *xr = x + (long)r * length;
        int8_t *yr = y + (long)r * length;
        int32_t max = -128;
        int64_t sum = 0, inv;
        for (i = 0; i < length; ++i)
            if (xr[i] > max) max = xr[i];
        for (i = 0; i < length; ++i) sum += table[max - xr[i]];
        inv = (((int64_t)mult << 30) + sum / 2) / sum;
        for (i = 0; i < length; ++i) {
            const int64_t v = (((int64_t)table[max - xr[i]] * inv + ((int64_t)1 << (total - 1))) >> total) + zy;
            yr[i] = (int8_t)(v > 127 ? 127 : (v < -128 ? -128 : v));
        }
    }
}

/* @kernel concat */
/* One input of a Concat: `outer` blocks of `block` values at `offset` in rows of `out_block`,
 * requantized unless `copy`. */
static void presso_concat_part(const int8_t *x, int8_t *y, int outer, int block, int out_block, int offset,
                               int copy, int32_t zx, int32_t mult, int32_t shift, int32_t zy, int32_t lo,
                               int32_t hi)
{
    int o, i;
    for (o = 0; o < outer; ++o) {
        const int8_t *xo = x + (long)o * block;
        int8_t *yo = y + (long)o * out_block + offset;
        if (copy)
            for (i = 0; i < block; ++i) yo[i] = xo[i];
        else
            for (i = 0; i < block; ++i) yo[i] = presso_requant((int32_t)xo[i] - zx, mult, shift, zy, lo, hi);
    }
}

/* @kernel gather */
/* Strided copy: y walks `shape` (up to 6 axes) in order, x at `strides` from x; Transpose, Slice. */
static void presso_gather(const int8_t *x, int8_t *y, int rank, const int32_t *shape, const int32_t *strides)
{
    int32_t idx[6] = {0, 0, 0, 0, 0, 0};
    long total = 1, n;
    int d;
    for (d = 0; d < rank; ++d) total *= shape[d];
    for (n = 0; n < total; ++n) {
        long off = 0;
        for (d = 0; d < rank; ++d) off += (long)idx[d] * strides[d];
        y[n] = x[off];
        for (d = rank - 1; d >= 0; --d) {
            if (++idx[d] < shape[d]) break;
            idx[d] = 0;
        }
    }
}

/* @kernel copy */
static void presso_copy(const int8_t *x, int8_t *y, long n)
{
    long i;
    for (i = 0; i < n; ++i) y[i] = x[i];
}

/* @kernel gather_rows */
/* Embedding lookup: row idx[i] of a [rows x row] int8 table (already at the output's scale)
 * for each of `count` indices; an index outside [-rows, rows) is an error (returns 1). */
static int presso_gather_rows(const int32_t *idx, int8_t *y, int count, int rows, int row, const int8_t *table)
{
    int i, j;
    for (i = 0; i < count; ++i) {
        int32_t k = idx[i];
        const int8_t *src;
        if (k < 0) k += rows;
        if (k < 0 || k >= rows) return 1;
        src = table + (long)k * row;
        for (j = 0; j < row; ++j) y[(long)i * row + j] = src[j];
    }
    return 0;
}

/* @kernel layernorm */
static uint64_t presso_isqrt64(uint64_t v)
{
    uint64_t r = 0, bit = (uint64_t)1 << 62;
    while (bit > v) bit >>= 2;
    while (bit) {
        if (v >= r + bit) {
            v -= r + bit;
            r = (r >> 1) + bit;
        } else {
            r >>= 1;
        }
        bit >>= 2;
    }
    return r;
}

/* LayerNormalization over the last axis. Per row, with v = x - zx: t = n*v - sum(v) and
 * D = n*sum(v^2) - sum(v)^2 + eps*n^2/s^2, so that the normalised value is t / sqrt(D); it
 * is formed in Q16 from one integer square root (scaled to ~28 bits) and one reciprocal per
 * row, then multiplied by gamma_j / s_y (mult, shift) and offset by beta_j / s_y (Q16). */
static void presso_layernorm(const int8_t *x, int8_t *y, int rows, int n, int32_t zx, int64_t eps,
                             const int32_t *mult, const int32_t *shift, const int32_t *beta_q16, int32_t zy,
                             int32_t lo, int32_t hi)
{
    int r, i;
    for (r = 0; r < rows; ++r) {
        const int8_t *xr = x + (long)r * n;
        int8_t *yr = y + (long)r * n;
        int32_t sum = 0;
        int64_t sumsq = 0, d, inv;
        int bits = 0, f;
        uint64_t s;
        for (i = 0; i < n; ++i) {
            const int32_t v = (int32_t)xr[i] - zx;
            sum += v;
            sumsq += v * v;
        }
        d = (int64_t)n * sumsq - (int64_t)sum * sum + eps;
        if (d < 1) d = 1;
        while (bits < 63 && ((uint64_t)d >> bits) != 0) ++bits;
        f = (56 - bits) / 2;
        if (f < 0) f = 0;
        s = presso_isqrt64((uint64_t)d << (2 * f)); /* sqrt(d) * 2^f */
        if (s == 0) s = 1;
        inv = (int64_t)(((uint64_t)1 << 62) / s);
        for (i = 0; i < n; ++i) {
            const int64_t t = (int64_t)n * ((int32_t)xr[i] - zx) - sum;
            const int64_t q16 = (t * inv + ((int64_t)1 << (45 - f))) >> (46 - f);
            int64_t v = ((q16 * mult[i] + ((int64_t)1 << (shift[i] - 1))) >> shift[i]) + beta_q16[i];
            v = ((v + 32768) >> 16) + zy;
            yr[i] = (int8_t)(v < lo ? lo : (v > hi ? hi : v));
        }
    }
}

/* @kernel lrn */
/* LRN across channels (NCHW, batch 1). With v = x - zx and S the sum of v^2 over the window
 * [c - before, c + after], y = zy + v * g(S) / 2^gbits, where g is tabulated exactly for
 * S < 32 and at 32 points per octave above, and interpolated linearly in between. */
static void presso_lrn(const int8_t *x, int8_t *y, int C, int inner, int before, int after, int32_t zx,
                       const int32_t *table, int32_t gbits, int32_t zy, int32_t lo, int32_t hi)
{
    int c, i, j;
    for (i = 0; i < inner; ++i) {
        for (c = 0; c < C; ++c) {
            const int first = c - before < 0 ? 0 : c - before;
            const int last = c + after >= C ? C - 1 : c + after;
            int32_t total = 0, index, step = 0, frac = 0;
            int64_t g, v;
            for (j = first; j <= last; ++j) {
                const int32_t d = (int32_t)x[(long)j * inner + i] - zx;
                total += d * d;
            }
            if (total < 32) {
                index = total;
            } else {
                step = 26 - __builtin_clz((uint32_t)total); /* octave - 5 */
                index = 32 + step * 32 + ((total >> step) & 31);
                frac = total & ((1 << step) - 1);
            }
            g = table[index] + (((int64_t)(table[index + 1] - table[index]) * frac) >> step);
            v = (int64_t)((int32_t)x[(long)c * inner + i] - zx) * g;
            v = ((v + ((int64_t)1 << (gbits - 1))) >> gbits) + zy;
            y[(long)c * inner + i] = (int8_t)(v < lo ? lo : (v > hi ? hi : v));
        }
    }
}
