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
