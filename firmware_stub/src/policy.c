/*
 * policy.c -- the offload decision (docs/protocol.md section 5) and the motion the header's flags
 * report (motion_cg). Decided on the integers that go on the wire, so the wearable and the
 * gateway agree exactly.
 */
#include "gwfw.h"

uint16_t gwfw_offload_confidence_e4(uint16_t activity_conf_e4, uint8_t signal_quality,
                                    uint16_t hr_cbpm, uint8_t activity, uint16_t rest_limit_cbpm)
{
    uint32_t quality;

    /* Rest with a heart rate above the resting limit: the two answers contradict each other. */
    if (activity == GWFW_ACTIVITY_REST && rest_limit_cbpm != 0u && hr_cbpm > rest_limit_cbpm) {
        return 0u;
    }
    /* No heart rate (no pulse in the window) or no quality: only the activity's counts. */
    if (hr_cbpm == 0u || signal_quality == GWFW_UNKNOWN) {
        return activity_conf_e4;
    }
    /* Both probabilities multiplied, rounded half up: at most 65535 * 100 + 50, in uint32. */
    quality = signal_quality > 100u ? 100u : signal_quality;
    return (uint16_t)(((uint32_t)activity_conf_e4 * quality + 50u) / 100u);
}

uint16_t gwfw_offload_reason(uint16_t entropy_mbits, uint16_t conf_e4, uint16_t tau_mbits,
                             uint16_t min_conf_e4)
{
    uint16_t reason = 0u;

    if (entropy_mbits > tau_mbits) {
        reason |= GWFW_OFFLOAD_ENTROPY;
    }
    if (conf_e4 < min_conf_e4) {
        reason |= GWFW_OFFLOAD_LOW_CONFIDENCE;
    }
    return reason;
}

/* x*x + y*y + z*z of sample i: at most 3 * 2^30, fits uint64 with room for the 10^6 scale. */
static uint64_t squared(const int16_t *acc_xyz, uint16_t i)
{
    const int32_t x = acc_xyz[3u * (uint32_t)i];
    const int32_t y = acc_xyz[3u * (uint32_t)i + 1u];
    const int32_t z = acc_xyz[3u * (uint32_t)i + 2u];

    return (uint64_t)(x * x) + (uint64_t)(y * y) + (uint64_t)(z * z);
}

int32_t gwfw_acc_last_impact(const int16_t *acc_xyz, uint16_t n_acc, uint16_t acc_lsb_per_g,
                             uint16_t threshold_milli_g)
{
    /* floor(sqrt(10^6 q) / L) >= T  <=>  sqrt(10^6 q) >= T * L  <=>  10^6 q >= (T * L)^2 */
    const uint64_t tl = (uint64_t)threshold_milli_g * acc_lsb_per_g;
    const uint64_t bound = tl * tl;
    uint16_t i;

    if (acc_xyz == NULL || acc_lsb_per_g == 0u) {
        return -1;
    }
    for (i = n_acc; i > 0u; i--) {
        if (1000000u * squared(acc_xyz, (uint16_t)(i - 1u)) >= bound) {
            return (int32_t)(i - 1u);
        }
    }
    return -1;
}

/* a * b as a 128-bit number (hi, lo): C99 has no 128-bit integer type. */
static void mul64(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo)
{
    const uint64_t a0 = a & 0xFFFFFFFFu;
    const uint64_t a1 = a >> 32;
    const uint64_t b0 = b & 0xFFFFFFFFu;
    const uint64_t b1 = b >> 32;
    const uint64_t p00 = a0 * b0;
    const uint64_t p01 = a0 * b1;
    const uint64_t p10 = a1 * b0;
    const uint64_t mid = (p00 >> 32) + (p01 & 0xFFFFFFFFu) + (p10 & 0xFFFFFFFFu);

    *lo = (mid << 32) | (p00 & 0xFFFFFFFFu);
    *hi = a1 * b1 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

/* V = sum over axes of n * sum(x^2) - sum(x)^2 over the n samples starting at sample `first`:
 * n^2 times the summed per-axis population variances, exact. n <= 65535: |sum(x)| < 2^31,
 * sum(x^2) <= n * 2^30, each axis' term is n^2 times a variance < 2^30, so < 2^62, and V < 2^64. */
static uint64_t scaled_spread(const int16_t *acc_xyz, uint32_t first, uint32_t n)
{
    uint64_t v = 0u;
    uint32_t axis, i;

    for (axis = 0; axis < 3u; axis++) {
        int64_t sum = 0;
        uint64_t squares = 0u;
        for (i = first; i < first + n; i++) {
            const int64_t x = acc_xyz[3u * i + axis];
            sum += x;
            squares += (uint64_t)(x * x);
        }
        v += (uint64_t)n * squares - (uint64_t)(sum * sum);
    }
    return v;
}

/* Does the block of n samples starting at sample `first` move? spread >= M/1000 g <=>
 * 10^6 * V >= (n * M * L)^2 with V = scaled_spread() (>= 0). n <= 65535: V < 2^64,
 * n*M*L < 2^48; both sides are compared as 128-bit products. */
static int block_moves(const int16_t *acc_xyz, uint32_t first, uint32_t n, uint16_t lsb,
                       uint16_t moving_milli_g)
{
    const uint64_t v = scaled_spread(acc_xyz, first, n);
    uint64_t lhs_hi, lhs_lo, rhs_hi, rhs_lo;
    uint64_t bound;

    bound = (uint64_t)n * moving_milli_g * lsb;
    mul64(1000000u, v, &lhs_hi, &lhs_lo);
    mul64(bound, bound, &rhs_hi, &rhs_lo);
    return lhs_hi > rhs_hi || (lhs_hi == rhs_hi && lhs_lo >= rhs_lo);
}

/* ceil(ms * rate / 1000): the whole samples that cover a duration (< 2^24, no overflow). */
static uint32_t samples_in(uint16_t ms, uint8_t rate_hz)
{
    return ((uint32_t)ms * rate_hz + 999u) / 1000u;
}

int32_t gwfw_fall_impact(const int16_t *acc_xyz, uint16_t n_acc, uint8_t acc_rate_hz,
                         uint16_t acc_lsb_per_g, const struct gwfw_fall_params *p)
{
    int32_t k;
    uint32_t first, size, blocks, need, j;

    if (acc_xyz == NULL || p == NULL || acc_rate_hz == 0u || acc_lsb_per_g == 0u ||
        p->block_ms == 0u) {
        return -1;
    }
    k = gwfw_acc_last_impact(acc_xyz, n_acc, acc_lsb_per_g, p->impact_milli_g);
    if (k < 0) {
        return -1;
    }
    first = (uint32_t)k + samples_in(p->settle_ms, acc_rate_hz);
    size = samples_in(p->block_ms, acc_rate_hz);
    if (first > n_acc) {
        return -1;
    }
    blocks = (n_acc - first) / size;
    need = ((uint32_t)p->still_ms + p->block_ms - 1u) / p->block_ms;
    if (blocks < need) {
        return -1;
    }
    for (j = 0; j < blocks; j++) {
        if (block_moves(acc_xyz, first + j * size, size, acc_lsb_per_g, p->moving_milli_g)) {
            return -1;
        }
    }
    return k;
}

/* floor(sqrt(hi * 2^64 + lo)) for a value below 2^80 (the root is below 2^40): bit by bit from
 * the top, keeping a bit when the candidate's square (a 128-bit product) does not exceed it.
 * 40 steps, exact, no floating point. */
static uint64_t isqrt80(uint64_t hi, uint64_t lo)
{
    uint64_t root = 0u;
    uint64_t bit = (uint64_t)1u << 39;

    while (bit != 0u) {
        const uint64_t c = root | bit;
        uint64_t sq_hi, sq_lo;
        mul64(c, c, &sq_hi, &sq_lo);
        if (sq_hi < hi || (sq_hi == hi && sq_lo <= lo)) {
            root = c;
        }
        bit >>= 1;
    }
    return root;
}

uint8_t gwfw_motion_cg(const int16_t *acc_xyz, uint16_t n_acc, uint16_t acc_lsb_per_g)
{
    /* RMS in 1/100 g = 100 sqrt(V) / (n L) = sqrt(10^4 V) / (n L); rounded half up from the
     * floor q of the root: floor(q / (n L) + 1/2) = (2q + n L) / (2 n L). V < 2^64, so
     * 10^4 V < 2^78 (128-bit) and q < 2^39; n L < 2^32: no step overflows 64 bits. */
    uint64_t hi, lo, q, nl, cg;

    if (n_acc == 0u || acc_xyz == NULL || acc_lsb_per_g == 0u) {
        return 0u;
    }
    mul64(10000u, scaled_spread(acc_xyz, 0u, n_acc), &hi, &lo);
    q = isqrt80(hi, lo);
    nl = (uint64_t)n_acc * acc_lsb_per_g;
    cg = (2u * q + nl) / (2u * nl);
    return (uint8_t)(cg > GWFW_MOTION_CG_MAX ? GWFW_MOTION_CG_MAX : cg);
}

uint16_t gwfw_motion_flags(uint8_t motion_cg)
{
    return (uint16_t)(GWFW_FLAG_MOTION_REPORTED | ((uint16_t)motion_cg << GWFW_MOTION_SHIFT));
}

uint16_t gwfw_offload_motion(uint64_t window_start_ms, int have_fall, uint64_t fall_impact_ms,
                             uint32_t hold_ms)
{
    if (have_fall && window_start_ms <= fall_impact_ms + hold_ms) {
        return GWFW_OFFLOAD_MOTION;
    }
    return 0u;
}
