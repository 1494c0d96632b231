/*
 * demo.c -- one freshly encoded WINDOW, printed as a golden vector named "demo".
 *
 *   demo [--mtu N] [--seed S]     N in 23..517 (default 247), S a u32 (default 1)
 *
 * Runs the wearable's pipeline once on a synthetic 8 s window (int16 BVP at 64 Hz, ACC at
 * 32 Hz): entropy -> entropy_mbits -> offload decision -> flags (with the ACC's motion_cg) ->
 * encode -> fragments. The output is in the vector format of docs/protocol.md section 8, so the
 * gateway side can read it with gatewayd.protocol.vectors.parse_vectors. No clock is read: t_ms, seq and the signal
 * derive from the seed alone, so a given seed always prints the same bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gwfw.h"
#include "synth.h"

#define BASE_T_MS 1767225600000ull /* 2026-01-01T00:00:00Z */
#define TAU 3500u
#define MIN_CONF 6000u

static int usage(void)
{
    fprintf(stderr, "usage: demo [--mtu N] [--seed S]   (N in %u..%u, S in 0..4294967295)\n",
            GWFW_MTU_MIN, GWFW_MTU_MAX);
    return 2;
}

/* Parse a decimal number in [lo, hi]; 0 on success. */
static int parse_u32(const char *text, unsigned long lo, unsigned long hi, unsigned long *out)
{
    char *end;
    unsigned long v;

    if (text == NULL || text[0] < '0' || text[0] > '9') {
        return -1;
    }
    errno = 0;
    v = strtoul(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi) {
        return -1;
    }
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    static int16_t bvp[512];
    static int16_t acc[3 * 256];
    static uint8_t msg[GWFW_MAX_MESSAGE];
    unsigned long mtu = 247;
    unsigned long seed = 1;
    uint32_t prng;
    struct gwfw_summary s;
    struct gwfw_window w;
    double h;
    uint16_t reason;
    int len;
    int i;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mtu") == 0 && i + 1 < argc) {
            if (parse_u32(argv[++i], GWFW_MTU_MIN, GWFW_MTU_MAX, &mtu) != 0) {
                return usage();
            }
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            if (parse_u32(argv[++i], 0, 0xFFFFFFFFul, &seed) != 0) {
                return usage();
            }
        } else {
            return usage();
        }
    }

    /* xorshift32 needs a non-zero state; mix the seed so nearby seeds differ at once */
    prng = (uint32_t)(seed * 2654435761ul) ^ 0x2545F491u;
    if (prng == 0u) {
        prng = 0x2545F491u;
    }
    synth_bvp(bvp, 512, 64.0, 800.0, 150.0, 40, 0, &prng);
    synth_acc(acc, 256, 64, 3, &prng);

    memset(&s, 0, sizeof s);
    s.seq = (uint32_t)seed;
    s.t_ms = BASE_T_MS + (uint64_t)(uint32_t)seed * 8000u;
    s.flags = GWFW_FLAG_CLOCK_SYNCED;
    s.activity = (uint8_t)(synth_xorshift32(&prng) % (GWFW_ACTIVITY_MAX + 1u));
    s.pruning_pct = 40;
    s.activity_conf_e4 = (uint16_t)(4000u + synth_xorshift32(&prng) % 6001u);
    s.hr_cbpm = 7200; /* 1.2 Hz, the synthetic pulse */
    s.signal_quality = 90;
    s.battery_pct = 80;
    s.window_ms = 8000;

    memset(&w, 0, sizeof w);
    w.sample_format = GWFW_SAMPLE_INT16;
    w.bvp_rate_hz = 64;
    w.acc_rate_hz = 32;
    w.n_bvp = 512;
    w.n_acc = 256;
    w.acc_lsb_per_g = 64;
    w.bvp = bvp;
    w.acc_xyz = acc;

    h = gwfw_entropy_i16(bvp, 512);
    s.entropy_mbits = gwfw_entropy_mbits(h);
    reason = gwfw_offload_reason(s.entropy_mbits, conf_of(&s), TAU, MIN_CONF);
    if (reason == 0u) {
        /* cannot happen with this generator (H is about 3.6 bits > 3.5) but say so if it does */
        fprintf(stderr, "demo: the policy would not offload this window (H = %.3f bits)\n", h);
        return 1;
    }
    s.flags |= reason;
    s.flags |= gwfw_motion_flags(gwfw_motion_cg(acc, 256, 64));

    len = gwfw_encode_window(&s, &w, msg, sizeof msg);
    if (len < 0) {
        fprintf(stderr, "demo: encode: %s\n", gwfw_strerror(len));
        return 1;
    }
    printf("# demo: one synthetic WINDOW from firmware_stub/build/demo --mtu %lu --seed %lu\n", mtu,
           seed);
    if ((i = vec_print_message(stdout, "demo", (uint16_t)mtu, msg, (size_t)len)) < 0) {
        fprintf(stderr, "demo: fragment: %s\n", gwfw_strerror(i));
        return 1;
    }
    vec_print_entropy(stdout, h);
    vec_print_policy(stdout, TAU, MIN_CONF, reason);
    puts("end");
    return fflush(stdout) == 0 ? 0 : 1;
}
