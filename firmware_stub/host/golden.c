/*
 * golden.c -- writes the golden test vectors (docs/protocol.md section 8).
 *
 *   golden [PATH]     write to PATH, or to stdout
 *
 * Everything is deterministic: fixed timestamps, a fixed xorshift32 seed, no clock. The output
 * is committed as vectors/golden.txt; tests/test_firmware_stub.py regenerates it, compares it
 * byte for byte with the committed copy, and decodes every vector with the Python gateway.
 * Every message, fragment, entropy, offload decision and control verdict printed comes from the
 * library (libgwfw), not from this file, so the vectors show what the firmware really does.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gwfw.h"
#include "synth.h"

#define BASE_T_MS 1767225600000ull /* 2026-01-01T00:00:00Z */
#define SEED 0x2545F491u
#define TAU 3500u       /* the offload policy most vectors use */
#define MIN_CONF 6000u

static uint32_t prng = SEED;
static uint8_t ring_arena[16384];
static struct gwfw_ring ring;

static void fail(const char *what, int rc)
{
    fprintf(stderr, "golden: %s: %s (%d)\n", what, gwfw_strerror(rc), rc);
    exit(1);
}

static int must(int rc, const char *what)
{
    if (rc < 0) {
        fail(what, rc);
    }
    return rc;
}

/* A typical clock-synced SUMMARY at window number seq; each vector changes what it is about. */
static struct gwfw_summary summary_at(uint32_t seq)
{
    struct gwfw_summary s;

    memset(&s, 0, sizeof s);
    s.seq = seq;
    s.t_ms = BASE_T_MS + (uint64_t)seq * 8000u;
    s.flags = GWFW_FLAG_CLOCK_SYNCED;
    s.activity = 0; /* rest */
    s.pruning_pct = 40;
    s.activity_conf_e4 = 9000;
    s.entropy_mbits = 3412;
    s.hr_cbpm = 7250;
    s.signal_quality = 92;
    s.battery_pct = 87;
    s.window_ms = 8000;
    return s;
}

/* The motion flags a wearable sends with a SUMMARY: gwfw_motion_cg of the window's ACC, which a
 * SUMMARY does not carry. Here 8 s at 32 Hz of synthetic ACC at rest plus uniform noise of
 * noise_amp LSB at 64 LSB/g (0: a still wrist), from a PRNG of its own so that the windows'
 * signals below do not depend on which SUMMARYs report motion. */
static uint16_t summary_motion(int32_t noise_amp)
{
    static int16_t acc[3 * 256];
    uint32_t state = 0x6D6F7431u ^ (uint32_t)noise_amp;

    synth_acc(acc, 256, 64, noise_amp, &state);
    return gwfw_motion_flags(gwfw_motion_cg(acc, 256, 64));
}

/* Print a SUMMARY vector up to (not including) its "end" line. */
static void emit_summary(FILE *f, const char *comment, const char *name, uint16_t mtu,
                         const struct gwfw_summary *s)
{
    uint8_t msg[GWFW_SUMMARY_SIZE];
    const int len = must(gwfw_encode_summary(s, msg, sizeof msg), name);

    must(gwfw_ring_put(&ring, s->seq, msg, (size_t)len), "ring put");
    fprintf(f, "# %s\n", comment);
    must(vec_print_message(f, name, mtu, msg, (size_t)len), name);
}

static void emit_info(FILE *f, const struct gwfw_info *inf)
{
    uint8_t info[GWFW_INFO_MAX];
    const int n = must(gwfw_encode_info(inf, info, sizeof info), "info");

    vec_print_hex(f, "info", info, (size_t)n);
}

/* Entropy of the BVP exactly as it goes on the wire (narrowed to int8 for the int8 format). */
static double wire_entropy(const struct gwfw_window *w)
{
    static int8_t narrow[GWFW_MAX_MESSAGE];
    uint16_t i;

    if (w->sample_format == GWFW_SAMPLE_INT8) {
        for (i = 0; i < w->n_bvp; i++) {
            narrow[i] = (int8_t)w->bvp[i]; /* the encoder refuses values that do not fit */
        }
        return gwfw_entropy_i8(narrow, w->n_bvp);
    }
    return gwfw_entropy_i16(w->bvp, w->n_bvp);
}

struct window_out {
    int len;
    double h;
    uint16_t reason;
};

/* The wearable's pipeline on one window: entropy -> mbits -> offload decision (entropy,
 * confidence, and motion: each vector stands alone, so no fall candidate before it is held) ->
 * flags, with the motion_cg of the window's own ACC -> encode -> ring. Prints the vector up to
 * its "end" line. No golden window holds an impact (the ACC is at rest, under 2 g): a motion
 * vector would need a `policy` reason with bit 6, which gatewayd/protocol/vectors.py does not
 * accept. The motion decision has its own vectors, vectors/fall.txt (host/fall.c). */
static struct window_out emit_window(FILE *f, const char *comment, const char *name,
                                     uint16_t mtu, struct gwfw_summary *s,
                                     const struct gwfw_window *w, uint16_t tau,
                                     uint16_t min_conf, uint8_t *msg)
{
    static const struct gwfw_fall_params fall = GWFW_FALL_PARAMS_DEFAULT;
    struct window_out out;
    int32_t k;

    out.h = wire_entropy(w);
    s->entropy_mbits = gwfw_entropy_mbits(out.h);
    out.reason = gwfw_offload_reason(s->entropy_mbits, conf_of(s), tau, min_conf);
    k = gwfw_fall_impact(w->acc_xyz, w->n_acc, w->acc_rate_hz, w->acc_lsb_per_g, &fall);
    if (k >= 0) { /* the window starts at 0 ms of the uptime clock */
        out.reason |= gwfw_offload_motion(0u, 1, (uint64_t)k * 1000u / w->acc_rate_hz,
                                          GWFW_MOTION_HOLD_MS);
    }
    if (out.reason == 0u) {
        fprintf(stderr, "golden: %s: the policy would not offload this window\n", name);
        exit(1);
    }
    s->flags = (uint16_t)((s->flags & ~GWFW_FLAG_OFFLOAD_MASK) | out.reason);
    s->flags |= gwfw_motion_flags(gwfw_motion_cg(w->acc_xyz, w->n_acc, w->acc_lsb_per_g));
    out.len = must(gwfw_encode_window(s, w, msg, GWFW_MAX_MESSAGE), name);
    must(gwfw_ring_put(&ring, s->seq, msg, (size_t)out.len), "ring put");
    fprintf(f, "# %s\n", comment);
    must(vec_print_message(f, name, mtu, msg, (size_t)out.len), name);
    vec_print_entropy(f, out.h);
    vec_print_policy(f, tau, min_conf, out.reason);
    return out;
}

static void end(FILE *f)
{
    fputs("end\n", f);
}

/* A whole SUMMARY vector at MTU 247 whose flags carry the offload decision taken on its own
 * fields at tau 4000, minimum confidence 5000, with that decision's policy line. */
static void emit_decided_summary(FILE *f, const char *comment, const char *name,
                                 struct gwfw_summary *s)
{
    const uint16_t reason = gwfw_offload_reason(s->entropy_mbits, conf_of(s), 4000, 5000);

    s->flags |= reason;
    emit_summary(f, comment, name, 247, s);
    vec_print_policy(f, 4000, 5000, reason);
    end(f);
}

/* A control line whose verdict must be `ok` (1) or `reject` (0): a changed verdict is a bug. */
static void control(FILE *f, const uint8_t *cmd, size_t len, int expect_ok)
{
    const int rc = vec_print_control(f, cmd, len);

    if ((rc == GWFW_OK) != (expect_ok != 0)) {
        fprintf(stderr, "golden: control verdict changed: %s\n", gwfw_strerror(rc));
        exit(1);
    }
}

static void control_cmd(FILE *f, const struct gwfw_control *c)
{
    uint8_t cmd[GWFW_CONTROL_MAX];
    const int n = must(gwfw_encode_control(c, cmd, sizeof cmd), "control");

    control(f, cmd, (size_t)n, 1);
}

static void emit_controls(FILE *f)
{
    static const uint8_t bad_version[] = {0x02, 0x03, 0x28};
    static const uint8_t version_zero[] = {0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0};
    static const uint8_t opcode_zero[] = {0x01, 0x00};
    static const uint8_t opcode_six[] = {0x01, 0x06, 0x00, 0x00};
    static const uint8_t opcode_ff[] = {0x01, 0xFF, 0x00};
    static const uint8_t only_version[] = {0x01};
    static const uint8_t time_sync_9[] = {0x01, 0x01, 1, 2, 3, 4, 5, 6, 7};
    static const uint8_t time_sync_11[] = {0x01, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    static const uint8_t policy_5[] = {0x01, 0x02, 0xAC, 0x0D, 0x70};
    static const uint8_t pruning_2[] = {0x01, 0x03};
    static const uint8_t resend_7[] = {0x01, 0x04, 0x29, 0, 0, 0, 0x03};
    static const uint8_t over_20[21] = {0x01, 0x01};
    static const uint8_t policy_conf[] = {0x01, 0x02, 0xAC, 0x0D, 0x11, 0x27}; /* 10001 */
    static const uint8_t pruning_101[] = {0x01, 0x03, 101};
    static const uint8_t pruning_255[] = {0x01, 0x03, 0xFF};
    static const uint8_t resend_0[] = {0x01, 0x04, 0x29, 0, 0, 0, 0x00, 0x00};
    static const uint8_t resend_257[] = {0x01, 0x04, 0x29, 0, 0, 0, 0x01, 0x01};
    static const uint8_t rest_limit_3[] = {0x01, 0x05, 0x10};
    static const uint8_t rest_limit_5[] = {0x01, 0x05, 0x10, 0x27, 0x00};
    static const uint8_t rest_limit_30001[] = {0x01, 0x05, 0x31, 0x75};
    struct gwfw_summary s = summary_at(6);
    struct gwfw_control c;

    emit_summary(f, "control writes (gateway -> wearable) as gwfw_decode_control judged them",
                 "controls_mtu247", 247, &s);

    memset(&c, 0, sizeof c);
    c.opcode = GWFW_OP_TIME_SYNC;
    c.unix_ms = BASE_T_MS + 123u;
    control_cmd(f, &c);
    memset(&c, 0, sizeof c);
    c.opcode = GWFW_OP_SET_POLICY;
    c.tau_mbits = TAU;
    c.min_conf_e4 = MIN_CONF;
    control_cmd(f, &c);
    c.tau_mbits = 0;
    c.min_conf_e4 = 0;
    control_cmd(f, &c);
    c.tau_mbits = 65535;
    c.min_conf_e4 = GWFW_CONF_E4_MAX;
    control_cmd(f, &c);
    memset(&c, 0, sizeof c);
    c.opcode = GWFW_OP_SET_PRUNING;
    c.pruning_pct = 0;
    control_cmd(f, &c);
    c.pruning_pct = 40;
    control_cmd(f, &c);
    c.pruning_pct = 100;
    control_cmd(f, &c);
    memset(&c, 0, sizeof c);
    c.opcode = GWFW_OP_RESEND;
    c.first_seq = 41;
    c.count = 3;
    control_cmd(f, &c);
    c.first_seq = 0xFFFFFFFFu; /* 256 messages across the wrap of seq */
    c.count = GWFW_RESEND_MAX;
    control_cmd(f, &c);
    c.first_seq = 100;
    c.count = 1;
    control_cmd(f, &c);
    memset(&c, 0, sizeof c);
    c.opcode = GWFW_OP_SET_REST_LIMIT;
    c.rest_limit_cbpm = GWFW_REST_LIMIT_CBPM;
    control_cmd(f, &c);
    c.rest_limit_cbpm = 0; /* the check off */
    control_cmd(f, &c);
    c.rest_limit_cbpm = GWFW_HR_CBPM_MAX;
    control_cmd(f, &c);

    control(f, bad_version, sizeof bad_version, 0);
    control(f, version_zero, sizeof version_zero, 0);
    control(f, opcode_zero, sizeof opcode_zero, 0);
    control(f, opcode_six, sizeof opcode_six, 0);
    control(f, opcode_ff, sizeof opcode_ff, 0);
    control(f, only_version, sizeof only_version, 0);
    control(f, time_sync_9, sizeof time_sync_9, 0);
    control(f, time_sync_11, sizeof time_sync_11, 0);
    control(f, policy_5, sizeof policy_5, 0);
    control(f, pruning_2, sizeof pruning_2, 0);
    control(f, resend_7, sizeof resend_7, 0);
    control(f, over_20, sizeof over_20, 0);
    control(f, policy_conf, sizeof policy_conf, 0);
    control(f, pruning_101, sizeof pruning_101, 0);
    control(f, pruning_255, sizeof pruning_255, 0);
    control(f, resend_0, sizeof resend_0, 0);
    control(f, resend_257, sizeof resend_257, 0);
    control(f, rest_limit_3, sizeof rest_limit_3, 0);
    control(f, rest_limit_5, sizeof rest_limit_5, 0);
    control(f, rest_limit_30001, sizeof rest_limit_30001, 0);
    end(f);
}

static void emit_summaries(FILE *f)
{
    struct gwfw_summary s;
    struct gwfw_info inf;

    s = summary_at(1);
    emit_summary(f, "SUMMARY at the smallest MTU: 32 bytes in two 16-byte chunks; no motion "
                    "reported (an older sender)",
                 "summary_mtu23", 23, &s);
    end(f);

    s = summary_at(2);
    s.t_ms = 123456u; /* no TIME_SYNC since boot: t_ms counts from boot */
    s.flags = 0;
    s.activity = GWFW_UNKNOWN;
    s.activity_conf_e4 = 0;
    s.entropy_mbits = 0;
    s.hr_cbpm = 0;
    s.signal_quality = GWFW_UNKNOWN;
    s.battery_pct = GWFW_UNKNOWN;
    emit_summary(f, "SUMMARY: clock not synced, unknown activity, quality and battery, no HR",
                 "summary_unknown_mtu247", 247, &s);
    end(f);

    s = summary_at(3);
    s.flags = GWFW_FLAG_CLOCK_SYNCED | GWFW_FLAG_CHARGING | summary_motion(20); /* motion_cg 33 */
    s.activity = 1; /* light */
    s.activity_conf_e4 = 8000;
    s.entropy_mbits = 4321;
    emit_decided_summary(f, "SUMMARY carrying an offload decision whose raw window was not sent",
                         "summary_offload_not_sent_mtu247", &s);

    /* The offload confidence is the activity's probability times the heart rate's quality. */
    s = summary_at(7);
    s.flags |= summary_motion(60); /* motion_cg 92 */
    s.activity = 2; /* vigorous */
    s.activity_conf_e4 = 9500;
    s.hr_cbpm = 14210;
    s.signal_quality = 41;
    emit_decided_summary(f,
                         "SUMMARY offloaded for its heart rate: sure of the activity, quality 41",
                         "summary_unsure_hr_mtu247", &s);

    s = summary_at(8);
    s.activity_conf_e4 = 9000;
    s.hr_cbpm = 0;
    s.signal_quality = 0;
    emit_decided_summary(f,
                         "SUMMARY without a pulse (no HR, quality 0): not offloaded for its "
                         "heart rate",
                         "summary_no_pulse_mtu247", &s);

    /* Rest at a heart rate above the resting limit: the answers contradict each other. */
    s = summary_at(9);
    s.activity = 0; /* rest */
    s.activity_conf_e4 = 9600;
    s.hr_cbpm = 11200;
    s.signal_quality = 90;
    emit_decided_summary(f,
                         "SUMMARY offloaded for rest at 112 bpm: sure of both, but they contradict",
                         "summary_rest_above_limit_mtu247", &s);

    memset(&inf, 0, sizeof inf);
    inf.fw_major = GWFW_FW_VERSION_MAJOR;
    inf.fw_minor = GWFW_FW_VERSION_MINOR;
    inf.fw_patch = GWFW_FW_VERSION_PATCH;
    inf.boot_id = 0x5EED1234u;
    inf.pruning_pct = 40;
    inf.bvp_rate_hz = 64;
    inf.acc_rate_hz = 32;
    inf.sample_format = GWFW_SAMPLE_INT16;
    inf.acc_lsb_per_g = 64;
    inf.tau_mbits = TAU;
    inf.min_conf_e4 = MIN_CONF;
    inf.next_seq = 42;
    inf.model_id = "mnv2-1d_p40.v1";
    inf.model_id_len = (uint8_t)strlen(inf.model_id);
    s = summary_at(4);
    emit_summary(f, "SUMMARY with an info value: int16 64/32 Hz, 40% pruned model", "info_mtu247",
                 247, &s);
    emit_info(f, &inf);
    end(f);

    inf.fw_major = 1;
    inf.fw_minor = 22;
    inf.fw_patch = 255;
    inf.boot_id = 0xFFFFFFFFu;
    inf.pruning_pct = 100;
    inf.bvp_rate_hz = 255;
    inf.acc_rate_hz = 1;
    inf.sample_format = GWFW_SAMPLE_INT8;
    inf.acc_lsb_per_g = 65535;
    inf.tau_mbits = 65535;
    inf.min_conf_e4 = GWFW_CONF_E4_MAX;
    inf.next_seq = 0xFFFFFFFFu;
    inf.model_id = "mnv2-1d.ppg-dalia_p80-fold4.v1.0";
    inf.model_id_len = (uint8_t)strlen(inf.model_id); /* 32 characters: the maximum */
    s = summary_at(5);
    emit_summary(f, "SUMMARY with an info value at its limits: 32-character model id, int8",
                 "info_limits_mtu185", 185, &s);
    emit_info(f, &inf);
    end(f);

    emit_controls(f);

    inf.fw_major = 0;
    inf.fw_minor = 0;
    inf.fw_patch = 1;
    inf.boot_id = 0;
    inf.pruning_pct = 0;
    inf.bvp_rate_hz = 64;
    inf.acc_rate_hz = 32;
    inf.sample_format = GWFW_SAMPLE_INT16;
    inf.acc_lsb_per_g = 1;
    inf.tau_mbits = 0;
    inf.min_conf_e4 = 0;
    inf.next_seq = 0;
    inf.model_id = NULL;
    inf.model_id_len = 0;
    s = summary_at(0xFFFFFFFFu);
    s.t_ms = BASE_T_MS + 8000u;
    s.flags |= GWFW_FLAG_OFF_WRIST | summary_motion(0); /* on a table: motion reported, 0 */
    s.activity = 0; /* rest */
    s.hr_cbpm = 0;
    s.signal_quality = 0;
    s.battery_pct = 100;
    emit_summary(f, "SUMMARY with seq 0xFFFFFFFF (tag 0xffff), off wrist (motion reported: 0); "
                    "info without a model",
                 "summary_seq_max_mtu23", 23, &s);
    emit_info(f, &inf);
    end(f);

    s = summary_at(0);
    s.t_ms = BASE_T_MS + 16000u;
    s.activity = GWFW_ACTIVITY_MAX; /* vigorous */
    s.pruning_pct = 100;
    s.activity_conf_e4 = GWFW_CONF_E4_MAX;
    s.entropy_mbits = GWFW_ENTROPY_MBITS_MAX;
    s.hr_cbpm = GWFW_HR_CBPM_MAX;
    s.signal_quality = 100;
    s.battery_pct = 0;
    s.window_ms = GWFW_WINDOW_MS_MAX;
    s.flags |= summary_motion(250); /* about 3.9 g RMS: motion_cg 255 */
    emit_summary(f, "SUMMARY with seq 0 (after the wrap), fields at their maxima (motion_cg 255), "
                    "largest MTU",
                 "summary_seq_zero_mtu517", 517, &s);
    end(f);
}

static void emit_windows(FILE *f)
{
    static int16_t bvp[1024];
    static int16_t acc[3 * 1024];
    static uint8_t msg[GWFW_MAX_MESSAGE];
    static uint8_t first[GWFW_MAX_MESSAGE];
    struct gwfw_summary s;
    struct gwfw_window w;
    struct window_out first_out;
    uint8_t *stored;
    size_t stored_len;
    uint16_t i;

    memset(&w, 0, sizeof w);
    w.sample_format = GWFW_SAMPLE_INT16;
    w.bvp_rate_hz = 64;
    w.acc_rate_hz = 32;
    w.n_bvp = 512;
    w.n_acc = 256;
    w.acc_lsb_per_g = 64;
    w.bvp = bvp;
    w.acc_xyz = acc;

    synth_bvp(bvp, 512, 64.0, 800.0, 150.0, 40, 0, &prng);
    synth_acc(acc, 256, 64, 3, &prng);
    s = summary_at(100);
    s.activity_conf_e4 = 8000;
    s.hr_cbpm = 7200;
    first_out = emit_window(f,
                            "WINDOW int16, 8 s of BVP at 64 Hz and ACC at 32 Hz (2604 bytes), "
                            "offloaded by entropy",
                            "window_int16_mtu247", 247, &s, &w, TAU, MIN_CONF, first);
    end(f);
    fputs("# the same WINDOW at the smallest MTU: 163 fragments\n", f);
    must(vec_print_message(f, "window_int16_mtu23", 23, first, (size_t)first_out.len), "mtu23");
    vec_print_entropy(f, first_out.h);
    vec_print_policy(f, TAU, MIN_CONF, first_out.reason);
    end(f);

    synth_bvp(bvp, 512, 64.0, 200.0, 50.0, 600, 1, &prng);
    synth_acc(acc, 256, 64, 40, &prng);
    s = summary_at(101);
    s.activity = 2; /* vigorous */
    s.activity_conf_e4 = 3000;
    s.hr_cbpm = 11850;
    s.signal_quality = 35;
    emit_window(f, "WINDOW int16, motion-corrupted BVP: high entropy and low confidence",
                "window_int16_noisy_mtu247", 247, &s, &w, TAU, MIN_CONF, msg);
    end(f);

    synth_bvp(bvp, 512, 64.0, 80.0, 15.0, 6, 0, &prng);
    synth_acc(acc, 256, 64, 3, &prng);
    w.sample_format = GWFW_SAMPLE_INT8;
    s = summary_at(102);
    s.activity = 2; /* vigorous */
    s.activity_conf_e4 = 5000;
    emit_window(f, "WINDOW int8 (1324 bytes), entropy under tau, offloaded by low confidence",
                "window_int8_mtu185", 185, &s, &w, 3800, MIN_CONF, msg);
    end(f);

    for (i = 0; i < 512; i++) {
        bvp[i] = 512; /* a saturated or detached sensor */
    }
    synth_acc(acc, 256, 64, 1, &prng);
    w.sample_format = GWFW_SAMPLE_INT16;
    s = summary_at(103);
    s.flags |= GWFW_FLAG_OFF_WRIST;
    s.activity = GWFW_UNKNOWN;
    s.activity_conf_e4 = 1200;
    s.hr_cbpm = 0;
    s.signal_quality = 0;
    emit_window(f, "WINDOW with a constant BVP: entropy exactly 0, offloaded by low confidence",
                "window_constant_mtu247", 247, &s, &w, TAU, MIN_CONF, msg);
    end(f);

    synth_bvp(bvp, 1009, 125.0, 90.0, 20.0, 8, 0, &prng);
    synth_acc(acc, 1009, 64, 4, &prng);
    w.sample_format = GWFW_SAMPLE_INT8;
    w.bvp_rate_hz = 125;
    w.acc_rate_hz = 125;
    w.n_bvp = 1009;
    w.n_acc = 1009;
    s = summary_at(104);
    s.window_ms = 8072;
    s.activity_conf_e4 = 9500;
    emit_window(f, "the largest message: WINDOW int8, 8072 ms at 125/125 Hz = 4080 bytes, "
                   "255 fragments at MTU 23",
                "window_int8_max_mtu23", 23, &s, &w, TAU, MIN_CONF, msg);
    end(f);

    synth_bvp(bvp, 100, 50.0, 800.0, 150.0, 40, 0, &prng);
    synth_acc(acc, 50, 64, 3, &prng);
    w.sample_format = GWFW_SAMPLE_INT16;
    w.bvp_rate_hz = 50;
    w.acc_rate_hz = 25;
    w.n_bvp = 100;
    w.n_acc = 50;
    s = summary_at(105);
    s.window_ms = 2000;
    s.activity_conf_e4 = 7000;
    emit_window(f, "WINDOW int16 of another shape: 2 s at 50/25 Hz, MTU 100",
                "window_int16_2s_mtu100", 100, &s, &w, TAU, MIN_CONF, msg);
    end(f);

    /* RESEND 100 1: the wearable finds the first window in its ring and flags it RESENT */
    must(gwfw_ring_get(&ring, 100, &stored, &stored_len), "ring get");
    if (stored_len != (size_t)first_out.len || memcmp(stored, first, stored_len) != 0) {
        fprintf(stderr, "golden: the ring returned other bytes\n");
        exit(1);
    }
    must(gwfw_mark_resent(stored, stored_len), "mark resent");
    fputs("# the first WINDOW again, from the ring, answering RESEND: flag RESENT, new CRC\n", f);
    must(vec_print_message(f, "window_resent_mtu247", 247, stored, stored_len), "resent");
    vec_print_entropy(f, first_out.h);
    vec_print_policy(f, TAU, MIN_CONF, first_out.reason);
    end(f);
}

int main(int argc, char **argv)
{
    FILE *f = stdout;

    if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
        fprintf(stderr, "usage: golden [PATH]   (writes the golden vectors to PATH or stdout)\n");
        return 2;
    }
    if (argc == 2) {
        f = fopen(argv[1], "wb");
        if (f == NULL) {
            perror(argv[1]);
            return 1;
        }
    }
    must(gwfw_ring_init(&ring, ring_arena, sizeof ring_arena), "ring init");

    fputs("# gatewayd golden vectors, protocol version 1 (docs/protocol.md section 8).\n"
          "# Written by firmware_stub/build/golden (make -C firmware_stub vectors): do not edit.\n"
          "# tests/test_firmware_stub.py checks them byte for byte against the Python gateway.\n",
          f);
    emit_summaries(f);
    emit_windows(f);

    if (fflush(f) != 0 || ferror(f) || (f != stdout && fclose(f) != 0)) {
        perror("golden: write");
        return 1;
    }
    return 0;
}
