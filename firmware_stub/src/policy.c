/*
 * policy.c -- the offload decision (docs/protocol.md section 5). Decided on the integers that go
 * on the wire, so the wearable and the gateway agree exactly.
 */
#include "gwfw.h"

uint16_t gwfw_offload_reason(uint16_t entropy_mbits, uint16_t activity_conf_e4,
                             uint16_t tau_mbits, uint16_t min_conf_e4)
{
    uint16_t reason = 0u;

    if (entropy_mbits > tau_mbits) {
        reason |= GWFW_OFFLOAD_ENTROPY;
    }
    if (activity_conf_e4 < min_conf_e4) {
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

/* floor(sqrt(x)), bit by bit: exact, no float (Python's math.isqrt). */
static uint64_t isqrt64(uint64_t x)
{
    uint64_t res = 0u;
    uint64_t bit = (uint64_t)1u << 62;

    while (bit > x) {
        bit >>= 2;
    }
    while (bit != 0u) {
        if (x >= res + bit) {
            x -= res + bit;
            res = (res >> 1) + bit;
        } else {
            res >>= 1;
        }
        bit >>= 2;
    }
    return res;
}

uint32_t gwfw_acc_peak_milli_g(const int16_t *acc_xyz, uint16_t n_acc, uint16_t acc_lsb_per_g)
{
    uint64_t top = 0u;
    uint16_t i;

    if (acc_xyz == NULL || acc_lsb_per_g == 0u) {
        return 0u;
    }
    for (i = 0; i < n_acc; i++) {
        const uint64_t q = squared(acc_xyz, i);
        if (q > top) {
            top = q;
        }
    }
    /* floor(floor(sqrt(X)) / L) == floor(sqrt(X) / L) for an integer L */
    return (uint32_t)(isqrt64(1000000u * top) / acc_lsb_per_g);
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

uint16_t gwfw_offload_motion(uint32_t peak_milli_g, uint16_t threshold_milli_g,
                             uint64_t window_start_ms, int have_impact, uint64_t last_impact_ms,
                             uint32_t hold_ms)
{
    if (peak_milli_g >= threshold_milli_g) {
        return GWFW_OFFLOAD_MOTION;
    }
    if (have_impact && window_start_ms <= last_impact_ms + hold_ms) {
        return GWFW_OFFLOAD_MOTION;
    }
    return 0u;
}
