/*
 * entropy.c -- the window entropy H(X) behind the offload decision (docs/protocol.md section 5,
 * docs/signals.md). Bit-identical with gatewayd/signals/entropy.py.
 *
 * Why bit-identical is possible: the sums are exact integers (int64), and the few floating
 * point steps are each one IEEE-754 double operation that is correctly rounded on both sides
 * (int64 -> double conversion, sqrt, division, +, *, floor), evaluated in the same order. The
 * one libm call, log2, is the same function on the gateway's host (CPython's math.log2 calls
 * the C library's log2); another libm's log2 may differ by an ulp in rare cases, i.e. ~1e-16
 * in H, which changes entropy_mbits only when H * 1000 lies that close to a half.
 *
 * What must NOT happen is the compiler fusing `h - p * log2(p)` into one fused multiply-add
 * (one rounding instead of two): the Makefile builds with -ffp-contract=off, and the pragma
 * below asks the same of clang. On 32-bit x86 build with -msse2 -mfpmath=sse (x87 extended
 * precision rounds differently); never build this file with -ffast-math.
 *
 * Specification, for n samples x[i]:
 *   S = sum x,  Q = sum x*x  (int64),  V = n*Q - S*S  (int64, = n^2 * variance);  V == 0 -> 0.
 *   z_i = (double)(n*x_i - S) / sqrt((double)V)       (the population z-score)
 *   k_i = floor((z_i + 4.0) * 4.0), clamped to 0..31  (32 bins over [-4, +4] sigma)
 *   H   = -sum over k = 0..31 in order, count[k] > 0, of p*log2(p), p = count[k] / n.
 * With n <= 65535 and |x| <= 32768: |S| < 2^31, Q < 2^46, n*Q and S*S < 2^63: no overflow.
 */
#include <math.h>

#include "gwfw.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* (z + 4) * (32 / 8): the bin scale, exactly 4.0 */
#define GWFW_BIN_SCALE ((double)GWFW_ENTROPY_BINS / (2.0 * GWFW_ENTROPY_RANGE_SIGMA))

/* One implementation for both sample widths: exactly one of x16, x8 is used. */
static double entropy_core(const int16_t *x16, const int8_t *x8, uint16_t n)
{
    uint32_t count[GWFW_ENTROPY_BINS];
    const int64_t nn = (int64_t)n;
    int64_t s = 0;
    int64_t q = 0;
    int64_t v;
    double sd;
    double h = 0.0;
    uint16_t i;
    int k;

    for (i = 0; i < n; i++) {
        const int64_t xi = x16 != NULL ? (int64_t)x16[i] : (int64_t)x8[i];
        s += xi;
        q += xi * xi;
    }
    v = nn * q - s * s;
    if (v == 0) {
        return 0.0; /* a constant signal (or n < 2) carries no information */
    }
    sd = sqrt((double)v);

    for (k = 0; k < GWFW_ENTROPY_BINS; k++) {
        count[k] = 0u;
    }
    for (i = 0; i < n; i++) {
        const int64_t xi = x16 != NULL ? (int64_t)x16[i] : (int64_t)x8[i];
        const double z = (double)(nn * xi - s) / sd;
        /* floor, not a cast: (z + 4) * 4 is negative for outliers below -4 sigma, and a cast
         * truncates toward zero. Clamp as a double so no out-of-range value is ever converted. */
        const double f = floor((z + (double)GWFW_ENTROPY_RANGE_SIGMA) * GWFW_BIN_SCALE);
        if (f < 0.0) {
            k = 0;
        } else if (f > (double)(GWFW_ENTROPY_BINS - 1)) {
            k = GWFW_ENTROPY_BINS - 1;
        } else {
            k = (int)f;
        }
        count[k]++;
    }

    for (k = 0; k < GWFW_ENTROPY_BINS; k++) {
        if (count[k] > 0u) {
            const double p = (double)count[k] / (double)n;
            /* (log2) calls the function even where <math.h> defines a log2() macro: newlib's
             * is log(x) / ln 2, two roundings, which could drift from the gateway's log2 */
            h -= p * (log2)(p);
        }
    }
    return h;
}

double gwfw_entropy_i16(const int16_t *x, uint16_t n)
{
    if (x == NULL) {
        return 0.0;
    }
    return entropy_core(x, NULL, n);
}

double gwfw_entropy_i8(const int8_t *x, uint16_t n)
{
    if (x == NULL) {
        return 0.0;
    }
    return entropy_core(NULL, x, n);
}

uint16_t gwfw_entropy_mbits(double h_bits)
{
    const double m = floor(h_bits * 1000.0 + 0.5);

    if (!(m > 0.0)) { /* also NaN */
        return 0u;
    }
    if (m > 65535.0) {
        return 65535u;
    }
    return (uint16_t)m;
}
