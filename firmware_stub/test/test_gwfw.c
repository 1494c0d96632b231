/*
 * test_gwfw.c -- unit tests of libgwfw on the host. Exits non-zero if any check fails.
 * (The cross-language checks -- Python decodes what C encodes -- are in
 * tests/test_firmware_stub.py, driven by the golden vectors.)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gwfw.h"

static int failures;
static int checks;

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        checks++;                                                                                 \
        if (!(cond)) {                                                                            \
            failures++;                                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);             \
        }                                                                                         \
    } while (0)

#define CHECK_EQ(a, b)                                                                            \
    do {                                                                                          \
        const long long a_ = (long long)(a);                                                      \
        const long long b_ = (long long)(b);                                                      \
        checks++;                                                                                 \
        if (a_ != b_) {                                                                           \
            failures++;                                                                           \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %lld, %s == %lld\n", __FILE__,        \
                    __LINE__, #a, a_, #b, b_);                                                    \
        }                                                                                         \
    } while (0)

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32);
}

static int crc_ok(const uint8_t *msg, size_t len)
{
    return rd32(msg + len - 4) == gwfw_crc32(msg, len - 4);
}

static struct gwfw_summary good_summary(void)
{
    struct gwfw_summary s;

    memset(&s, 0, sizeof s);
    s.seq = 0x01020304u;
    s.t_ms = 0x1122334455667788ull;
    s.flags = GWFW_FLAG_CLOCK_SYNCED | GWFW_FLAG_OFFLOAD_ENTROPY;
    s.activity = 1; /* light */
    s.pruning_pct = 40;
    s.activity_conf_e4 = 9123;
    s.entropy_mbits = 3456;
    s.hr_cbpm = 7250;
    s.signal_quality = 92;
    s.battery_pct = 87;
    s.window_ms = 8000;
    return s;
}

static int16_t bvp[1024];
static int16_t acc[3 * 1024];
static uint8_t buf[8192];

static struct gwfw_window good_window(void)
{
    struct gwfw_window w;
    int i;

    for (i = 0; i < 1024; i++) {
        bvp[i] = (int16_t)(i % 2 == 0 ? -(i % 128) : (i % 128));
    }
    for (i = 0; i < 3 * 1024; i++) {
        acc[i] = (int16_t)((i % 3) == 2 ? 64 : (i % 7) - 3);
    }
    memset(&w, 0, sizeof w);
    w.sample_format = GWFW_SAMPLE_INT16;
    w.bvp_rate_hz = 64;
    w.acc_rate_hz = 32;
    w.n_bvp = 512;
    w.n_acc = 256;
    w.acc_lsb_per_g = 64;
    w.bvp = bvp;
    w.acc_xyz = acc;
    return w;
}

static void test_crc(void)
{
    static const uint8_t check[] = "123456789";
    static const uint8_t zeros[32] = {0};

    CHECK_EQ(gwfw_crc32(check, 9), 0xCBF43926u);
    CHECK_EQ(gwfw_crc32(check, 0), 0u);
    CHECK_EQ(gwfw_crc32_update(gwfw_crc32(check, 4), check + 4, 5), 0xCBF43926u);
    CHECK_EQ(gwfw_crc32(zeros, 32), 0x190A55ADu); /* CRC-32 of 32 zero bytes (zlib) */
    CHECK_EQ(gwfw_crc32(NULL, 3), 0u);
}

static void test_summary(void)
{
    struct gwfw_summary s = good_summary();
    int n;

    memset(buf, 0xEE, sizeof buf);
    n = gwfw_encode_summary(&s, buf, sizeof buf);
    CHECK_EQ(n, 32);
    CHECK_EQ(buf[0], 1);
    CHECK_EQ(buf[1], GWFW_TYPE_SUMMARY);
    CHECK_EQ(rd16(buf + 2), GWFW_FLAG_CLOCK_SYNCED | GWFW_FLAG_OFFLOAD_ENTROPY);
    CHECK_EQ(rd32(buf + 4), 0x01020304u);
    CHECK(rd64(buf + 8) == 0x1122334455667788ull);
    CHECK_EQ(buf[8], 0x88); /* little-endian, byte by byte */
    CHECK_EQ(buf[16], 1);
    CHECK_EQ(buf[17], 40);
    CHECK_EQ(rd16(buf + 18), 9123);
    CHECK_EQ(rd16(buf + 20), 3456);
    CHECK_EQ(rd16(buf + 22), 7250);
    CHECK_EQ(buf[24], 92);
    CHECK_EQ(buf[25], 87);
    CHECK_EQ(rd16(buf + 26), 8000);
    CHECK(crc_ok(buf, 32));
    CHECK_EQ(buf[32], 0xEE); /* nothing written past the message */

    /* limits that are allowed */
    s.activity = GWFW_UNKNOWN;
    s.signal_quality = GWFW_UNKNOWN;
    s.battery_pct = GWFW_UNKNOWN;
    s.pruning_pct = 100;
    s.activity_conf_e4 = 10000;
    s.entropy_mbits = 5000;
    s.hr_cbpm = 30000;
    s.window_ms = 60000;
    s.flags = GWFW_FLAG_DEFINED_MASK;
    CHECK_EQ(gwfw_encode_summary(&s, buf, sizeof buf), 32);
    s.window_ms = 1;
    s.hr_cbpm = 0;
    s.flags = 0; /* a SUMMARY need not offload */
    CHECK_EQ(gwfw_encode_summary(&s, buf, sizeof buf), 32);

    /* motion: bit 7 alone (motion_cg 0), and with any motion_cg in bits 8-15 */
    s.flags = GWFW_FLAG_MOTION_REPORTED;
    CHECK_EQ(gwfw_encode_summary(&s, buf, sizeof buf), 32);
    CHECK_EQ(rd16(buf + 2), 0x0080);
    s.flags = (uint16_t)(GWFW_FLAG_CLOCK_SYNCED | gwfw_motion_flags(1));
    CHECK_EQ(gwfw_encode_summary(&s, buf, sizeof buf), 32);
    CHECK_EQ(rd16(buf + 2), 0x0184);
    CHECK_EQ(buf[3], 1); /* the high byte of the little-endian flags is motion_cg */
    s.flags = 0xFFFF; /* every bit: OFFLOAD..., MOTION_REPORTED, motion_cg 255 */
    CHECK_EQ(gwfw_encode_summary(&s, buf, sizeof buf), 32);
    CHECK_EQ(rd16(buf + 2), 0xFFFF);
    CHECK(crc_ok(buf, 32));

    /* and those that are not: the gateway would answer bad_field */
#define REJECTS(field, value)                                                                     \
    do {                                                                                          \
        struct gwfw_summary t = good_summary();                                                  \
        t.field = value;                                                                          \
        CHECK_EQ(gwfw_encode_summary(&t, buf, sizeof buf), GWFW_E_RANGE);                         \
    } while (0)
    REJECTS(flags, 0x0100); /* bits 8-15 without MOTION_REPORTED (bit 7) stay reserved */
    REJECTS(flags, 0x8000);
    REJECTS(flags, 0xFF7F);
    REJECTS(activity, 3); /* groups are 0..2 */
    REJECTS(activity, 9);
    REJECTS(activity, 254);
    REJECTS(pruning_pct, 101);
    REJECTS(activity_conf_e4, 10001);
    REJECTS(entropy_mbits, 5001);
    REJECTS(hr_cbpm, 30001);
    REJECTS(signal_quality, 101);
    REJECTS(battery_pct, 254);
    REJECTS(window_ms, 0);
    REJECTS(window_ms, 60001);

    s = good_summary();
    CHECK_EQ(gwfw_encode_summary(&s, buf, 31), GWFW_E_BUFFER);
    CHECK_EQ(gwfw_encode_summary(NULL, buf, 32), GWFW_E_NULL);
    CHECK_EQ(gwfw_encode_summary(&s, NULL, 32), GWFW_E_NULL);
}

static void test_window(void)
{
    struct gwfw_summary s = good_summary();
    struct gwfw_window w = good_window();
    int n;
    int i;

    CHECK_EQ(gwfw_window_message_size(GWFW_SAMPLE_INT16, 512, 256), 2604);
    CHECK_EQ(gwfw_window_message_size(GWFW_SAMPLE_INT8, 512, 256), 1324);
    CHECK_EQ(gwfw_window_message_size(3, 512, 256), GWFW_E_RANGE);

    bvp[0] = -2;
    bvp[511] = 0x1234;
    acc[0] = -32768;
    acc[767] = 32767;
    memset(buf, 0xEE, sizeof buf);
    n = gwfw_encode_window(&s, &w, buf, sizeof buf);
    CHECK_EQ(n, 2604);
    CHECK_EQ(buf[1], GWFW_TYPE_WINDOW);
    CHECK_EQ(rd32(buf + 4), s.seq);
    CHECK_EQ(buf[28], GWFW_SAMPLE_INT16);
    CHECK_EQ(buf[29], 64);
    CHECK_EQ(buf[30], 32);
    CHECK_EQ(buf[31], 0);
    CHECK_EQ(rd16(buf + 32), 512);
    CHECK_EQ(rd16(buf + 34), 256);
    CHECK_EQ(rd16(buf + 36), 64);
    CHECK_EQ(rd16(buf + 38), 0);
    CHECK_EQ(buf[40], 0xFE); /* -2 as int16 LE */
    CHECK_EQ(buf[41], 0xFF);
    CHECK_EQ(rd16(buf + 40 + 2 * 511), 0x1234);
    CHECK_EQ(rd16(buf + 40 + 1024), 0x8000); /* acc x of the first triple */
    CHECK_EQ(rd16(buf + 40 + 1024 + 2), (uint16_t)acc[1]);
    CHECK_EQ(rd16(buf + 40 + 1024 + 4), 64); /* z: interleaved x, y, z */
    CHECK_EQ(rd16(buf + 40 + 1024 + 2 * 767), 0x7FFF);
    CHECK(crc_ok(buf, 2604));
    CHECK_EQ(buf[2604], 0xEE);

    /* int8: narrowed, one byte per sample */
    for (i = 0; i < 512; i++) {
        bvp[i] = (int16_t)(i % 256 - 128);
    }
    for (i = 0; i < 768; i++) {
        acc[i] = (int16_t)(127 - i % 256);
    }
    w.sample_format = GWFW_SAMPLE_INT8;
    n = gwfw_encode_window(&s, &w, buf, sizeof buf);
    CHECK_EQ(n, 1324);
    CHECK_EQ(buf[28], GWFW_SAMPLE_INT8);
    CHECK_EQ(buf[40], 0x80);               /* -128 */
    CHECK_EQ(buf[40 + 255], 0x7F);         /* 127 */
    CHECK_EQ(buf[40 + 512], 0x7F);         /* first acc sample, 127 */
    CHECK_EQ(buf[40 + 512 + 255], 0x80);   /* -128 */
    CHECK(crc_ok(buf, 1324));
    bvp[3] = 128;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);
    bvp[3] = -129;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);
    bvp[3] = 0;
    acc[700] = 200;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);
    acc[700] = 0;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), 1324);

    /* a WINDOW must carry an offload reason */
    w = good_window();
    s.flags = GWFW_FLAG_CLOCK_SYNCED;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);
    s.flags = GWFW_FLAG_OFFLOAD_CONFIDENCE;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), 2604);
    s.flags = GWFW_FLAG_OFFLOAD_MOTION; /* a motion event alone is a reason */
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), 2604);
    s.flags = 0x0101; /* bit 8 without MOTION_REPORTED: reserved */
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);
    s.flags = (uint16_t)(GWFW_FLAG_OFFLOAD_ENTROPY |
                         gwfw_motion_flags(gwfw_motion_cg(acc, w.n_acc, w.acc_lsb_per_g)));
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), 2604);
    CHECK_EQ(rd16(buf + 2), s.flags);
    s.flags = (uint16_t)(GWFW_FLAG_MOTION_REPORTED | gwfw_motion_flags(200)); /* no reason */
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);
    s = good_summary();

    /* counts must match rates and window */
    w.n_bvp = 511;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_LENGTH);
    w = good_window();
    w.n_acc = 257;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_LENGTH);
    w = good_window();
    s.window_ms = 4000;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_LENGTH);
    w.n_bvp = 256;
    w.n_acc = 128;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), 40 + 512 + 768 + 4);
    s = good_summary();

    /* field ranges of the window block */
    w = good_window();
    w.sample_format = 0;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);
    w.sample_format = 3;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);
    w = good_window();
    w.bvp_rate_hz = 0;
    w.n_bvp = 0;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);
    w = good_window();
    w.acc_rate_hz = 0;
    w.n_acc = 0;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);
    w = good_window();
    w.acc_lsb_per_g = 0;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);

    /* size: 125 Hz BVP and ACC for 8 s is 40 + 2000 + 6000 + 4 bytes: too long */
    w = good_window();
    w.bvp_rate_hz = 125;
    w.acc_rate_hz = 125;
    w.n_bvp = 1000;
    w.n_acc = 1000;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_TOO_LONG);
    /* ... but int8 over 8072 ms at 125/125 Hz is exactly 4080 bytes */
    for (i = 0; i < 1024; i++) {
        bvp[i] = (int16_t)(i % 100 - 50);
    }
    for (i = 0; i < 3 * 1024; i++) {
        acc[i] = (int16_t)(i % 50);
    }
    w.sample_format = GWFW_SAMPLE_INT8;
    w.n_bvp = 1009;
    w.n_acc = 1009;
    s.window_ms = 8072;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), 4080);
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, 4079), GWFW_E_BUFFER);
    s = good_summary();

    w = good_window();
    w.bvp = NULL;
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_NULL);
    w = good_window();
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, 2603), GWFW_E_BUFFER);
    CHECK_EQ(gwfw_encode_window(&s, NULL, buf, sizeof buf), GWFW_E_NULL);
    s.hr_cbpm = 30001; /* summary fields are checked for a WINDOW too */
    CHECK_EQ(gwfw_encode_window(&s, &w, buf, sizeof buf), GWFW_E_RANGE);
}

static void test_mark_resent(void)
{
    struct gwfw_summary s = good_summary();
    uint8_t msg[32];

    CHECK_EQ(gwfw_encode_summary(&s, msg, sizeof msg), 32);
    CHECK_EQ(gwfw_mark_resent(msg, 32), GWFW_OK);
    CHECK_EQ(rd16(msg + 2), s.flags | GWFW_FLAG_RESENT);
    CHECK(crc_ok(msg, 32));
    CHECK_EQ(gwfw_mark_resent(msg, 32), GWFW_OK); /* idempotent */
    CHECK(crc_ok(msg, 32));
    s.flags |= gwfw_motion_flags(200); /* the motion bits go along unchanged */
    CHECK_EQ(gwfw_encode_summary(&s, msg, sizeof msg), 32);
    CHECK_EQ(gwfw_mark_resent(msg, 32), GWFW_OK);
    CHECK_EQ(rd16(msg + 2), s.flags | GWFW_FLAG_RESENT);
    CHECK_EQ(msg[3], 200);
    CHECK(crc_ok(msg, 32));
    msg[20] ^= 1u;
    CHECK_EQ(gwfw_mark_resent(msg, 32), GWFW_E_CRC);
    msg[20] ^= 1u;
    CHECK_EQ(gwfw_mark_resent(msg, 31), GWFW_E_LENGTH);
    msg[0] = 2;
    CHECK_EQ(gwfw_mark_resent(msg, 32), GWFW_E_VERSION);
    msg[0] = 1;
    msg[1] = 3;
    CHECK_EQ(gwfw_mark_resent(msg, 32), GWFW_E_TYPE);
}

/* Iterate all fragments, checking headers and that the data concatenate to the message. */
static void check_fragments(const uint8_t *msg, size_t len, uint32_t seq, uint16_t mtu,
                            int expect_count)
{
    struct gwfw_frag_iter it;
    uint8_t frag[GWFW_MAX_FRAGMENT];
    static uint8_t joined[GWFW_MAX_MESSAGE];
    size_t joined_len = 0;
    int index = 0;
    int n;

    CHECK_EQ(gwfw_frag_init(&it, msg, len, seq, mtu), expect_count);
    while ((n = gwfw_frag_next(&it, frag, (size_t)mtu - 3u)) > 0) {
        CHECK(n <= mtu - 3);
        CHECK_EQ(rd16(frag), seq & 0xFFFFu);
        CHECK_EQ(frag[2], index);
        CHECK_EQ(frag[3], expect_count);
        if (index + 1 < expect_count) {
            CHECK_EQ(n, mtu - 3); /* every fragment but the last is full */
        }
        memcpy(joined + joined_len, frag + 4, (size_t)n - 4u);
        joined_len += (size_t)n - 4u;
        index++;
    }
    CHECK_EQ(n, 0);
    CHECK_EQ(index, expect_count);
    CHECK_EQ(joined_len, len);
    CHECK(memcmp(joined, msg, len) == 0);
    CHECK_EQ(gwfw_frag_next(&it, frag, sizeof frag), 0); /* stays done */
}

static void test_fragments(void)
{
    static uint8_t msg[GWFW_MAX_MESSAGE + 16];
    struct gwfw_frag_iter it;
    uint8_t frag[GWFW_MAX_FRAGMENT];
    size_t i;

    for (i = 0; i < sizeof msg; i++) {
        msg[i] = (uint8_t)(i * 7u + 3u);
    }
    CHECK_EQ(gwfw_frag_count(32, 23), 2);
    CHECK_EQ(gwfw_frag_count(2604, 23), 163);
    CHECK_EQ(gwfw_frag_count(2604, 247), 11);
    CHECK_EQ(gwfw_frag_count(32, 247), 1);
    CHECK_EQ(gwfw_frag_count(240, 247), 1);
    CHECK_EQ(gwfw_frag_count(241, 247), 2);
    CHECK_EQ(gwfw_frag_count(4080, 23), 255);
    CHECK_EQ(gwfw_frag_count(4080, 517), 8);
    CHECK_EQ(gwfw_frag_count(1, 23), 1);
    CHECK_EQ(gwfw_frag_count(4081, 23), GWFW_E_FRAGMENTS); /* 256 fragments */
    CHECK_EQ(gwfw_frag_count(4096, 23), GWFW_E_FRAGMENTS);
    CHECK_EQ(gwfw_frag_count(4081, 247), GWFW_E_TOO_LONG); /* fits 255, but over 4080 bytes */
    CHECK_EQ(gwfw_frag_count(0, 23), GWFW_E_LENGTH);
    CHECK_EQ(gwfw_frag_count(32, 22), GWFW_E_MTU);
    CHECK_EQ(gwfw_frag_count(32, 518), GWFW_E_MTU);
    CHECK_EQ(gwfw_frag_init(&it, msg, 4081, 1, 23), GWFW_E_FRAGMENTS);
    CHECK_EQ(gwfw_frag_init(&it, NULL, 32, 1, 23), GWFW_E_NULL);

    check_fragments(msg, 32, 1, 23, 2);
    check_fragments(msg, 2604, 0x12345678u, 23, 163);
    check_fragments(msg, 2604, 0xFFFFFFFFu, 247, 11);
    check_fragments(msg, 4080, 0, 23, 255);
    check_fragments(msg, 4080, 65536, 517, 8);
    check_fragments(msg, 1, 7, 23, 1);
    check_fragments(msg, 16, 7, 23, 1);
    check_fragments(msg, 17, 7, 23, 2);

    /* the last fragment carries the rest: 2604 = 162 * 16 + 12 */
    CHECK_EQ(gwfw_frag_init(&it, msg, 2604, 9, 23), 163);
    CHECK_EQ(gwfw_frag_write(&it, 162, frag, sizeof frag), 4 + 12);
    CHECK(memcmp(frag + 4, msg + 2592, 12) == 0);
    CHECK_EQ(gwfw_frag_write(&it, 163, frag, sizeof frag), GWFW_E_RANGE);
    /* a too-small buffer fails and does not advance */
    CHECK_EQ(gwfw_frag_next(&it, frag, 19), GWFW_E_BUFFER);
    CHECK_EQ(it.next, 0);
    CHECK_EQ(gwfw_frag_next(&it, frag, 20), 20);
    CHECK_EQ(it.next, 1);
}

static void test_entropy(void)
{
    static int16_t x[4096];
    static int8_t x8[4096];
    double h;
    int i;

    for (i = 0; i < 512; i++) {
        x[i] = 512;
    }
    CHECK(gwfw_entropy_i16(x, 512) == 0.0);
    CHECK(gwfw_entropy_i16(x, 1) == 0.0);
    CHECK(gwfw_entropy_i16(x, 0) == 0.0);
    CHECK(gwfw_entropy_i16(NULL, 5) == 0.0);

    /* two levels, equal counts: exactly 1 bit; four levels: exactly 2 bits */
    for (i = 0; i < 512; i++) {
        x[i] = (int16_t)(i % 2);
        x8[i] = (int8_t)(i % 2);
    }
    CHECK(gwfw_entropy_i16(x, 512) == 1.0);
    CHECK(gwfw_entropy_i8(x8, 512) == 1.0);
    CHECK(gwfw_entropy_i16(x, 2) == 1.0);
    for (i = 0; i < 512; i++) {
        x[i] = (int16_t)(1000 * (i % 4) - 32000);
    }
    CHECK(gwfw_entropy_i16(x, 512) == 2.0);

    /* extremes of int16 at n = 65535 must not overflow the int64 sums */
    for (i = 0; i < 4096; i++) {
        x[i] = i % 2 ? 32767 : -32768;
    }
    CHECK(gwfw_entropy_i16(x, 4096) == 1.0);

    /* an outlier beyond +4 sigma is clamped into the last bin, a big negative one into bin 0 */
    for (i = 0; i < 1000; i++) {
        x[i] = 0;
    }
    x[999] = 10000;
    h = gwfw_entropy_i16(x, 1000);
    CHECK(fabs(h - (-(0.999 * log2(0.999)) - 0.001 * log2(0.001))) < 1e-12);
    x[999] = -10000;
    CHECK(gwfw_entropy_i16(x, 1000) == h);

    /* at most log2(32) = 5 bits, whatever the signal; int8 and int16 agree */
    for (i = 0; i < 4096; i++) {
        x[i] = (int16_t)((i * 37) % 256 - 128);
        x8[i] = (int8_t)x[i];
    }
    h = gwfw_entropy_i16(x, 4096);
    CHECK(h > 2.0 && h <= 5.0);
    CHECK(gwfw_entropy_i8(x8, 4096) == h);

    CHECK_EQ(gwfw_entropy_mbits(0.0), 0);
    CHECK_EQ(gwfw_entropy_mbits(1.0), 1000);
    CHECK_EQ(gwfw_entropy_mbits(5.0), 5000);
    CHECK_EQ(gwfw_entropy_mbits(3.6294), 3629);
    CHECK_EQ(gwfw_entropy_mbits(3.6295), 3630); /* floor(x + 0.5): halves round up */
    CHECK_EQ(gwfw_entropy_mbits(0.0004999), 0);
    CHECK_EQ(gwfw_entropy_mbits(0.0005), 1);
    CHECK_EQ(gwfw_entropy_mbits(-1.0), 0);
    CHECK_EQ(gwfw_entropy_mbits(1e9), 65535);
    CHECK_EQ(gwfw_entropy_mbits(nan("")), 0);
}

static void test_offload_confidence(void)
{
    enum { REST = GWFW_ACTIVITY_REST, LIGHT = 1, LIMIT = GWFW_REST_LIMIT_CBPM };

    CHECK_EQ(gwfw_offload_confidence_e4(9000, 92, 7250, LIGHT, LIMIT), 8280); /* 0.9 x 0.92 */
    CHECK_EQ(gwfw_offload_confidence_e4(9000, 41, 7250, LIGHT, LIMIT), 3690); /* 0.9 x 0.41 */
    CHECK_EQ(gwfw_offload_confidence_e4(9999, 33, 7250, LIGHT, LIMIT), 3300); /* 3299.67 up */
    CHECK_EQ(gwfw_offload_confidence_e4(1, 50, 7250, LIGHT, LIMIT), 1);       /* half up */
    CHECK_EQ(gwfw_offload_confidence_e4(1, 49, 7250, LIGHT, LIMIT), 0);
    /* No pulse, or no quality: the heart rate is left out. */
    CHECK_EQ(gwfw_offload_confidence_e4(9000, 0, 0, LIGHT, LIMIT), 9000);
    CHECK_EQ(gwfw_offload_confidence_e4(9000, GWFW_UNKNOWN, 7250, LIGHT, LIMIT), 9000);
    CHECK_EQ(gwfw_offload_confidence_e4(10000, 100, 1, LIGHT, LIMIT), 10000);
    /* A quality above 100 counts as 100; no overflow. */
    CHECK_EQ(gwfw_offload_confidence_e4(10000, 150, 1, LIGHT, LIMIT), 10000);
    CHECK_EQ(gwfw_offload_confidence_e4(65535, 100, 1, LIGHT, LIMIT), 65535);
    CHECK_EQ(gwfw_offload_confidence_e4(0, 100, 30000, LIGHT, LIMIT), 0);
    /* Rest above the resting limit (100 bpm): the answers contradict each other. */
    CHECK_EQ(gwfw_offload_confidence_e4(9000, 92, 10001, REST, LIMIT), 0);
    CHECK_EQ(gwfw_offload_confidence_e4(9000, 92, 10000, REST, LIMIT), 8280); /* at it: not above */
    CHECK_EQ(gwfw_offload_confidence_e4(9000, 92, 10001, LIGHT, LIMIT), 8280);
    CHECK_EQ(gwfw_offload_confidence_e4(9000, GWFW_UNKNOWN, 12000, REST, LIMIT), 0);
    CHECK_EQ(gwfw_offload_confidence_e4(9000, 92, 12000, GWFW_UNKNOWN, LIMIT), 8280);
    CHECK_EQ(gwfw_offload_confidence_e4(9000, 92, 12000, REST, 0), 8280); /* 0: check off */
    CHECK_EQ(gwfw_offload_confidence_e4(9000, 92, 12000, REST, 15000), 8280);
}

static void test_policy(void)
{
    CHECK_EQ(gwfw_offload_reason(3500, 6000, 3500, 6000), 0); /* equal is not beyond */
    CHECK_EQ(gwfw_offload_reason(3501, 6000, 3500, 6000), GWFW_OFFLOAD_ENTROPY);
    CHECK_EQ(gwfw_offload_reason(3500, 5999, 3500, 6000), GWFW_OFFLOAD_LOW_CONFIDENCE);
    CHECK_EQ(gwfw_offload_reason(5000, 0, 0, 10000),
             GWFW_OFFLOAD_ENTROPY | GWFW_OFFLOAD_LOW_CONFIDENCE);
    CHECK_EQ(gwfw_offload_reason(5000, 0, 65535, 0), 0); /* never offload */
    CHECK_EQ(GWFW_OFFLOAD_ENTROPY, GWFW_FLAG_OFFLOAD_ENTROPY);
    CHECK_EQ(GWFW_OFFLOAD_LOW_CONFIDENCE, GWFW_FLAG_OFFLOAD_CONFIDENCE);
    CHECK_EQ(GWFW_OFFLOAD_MOTION, 0x0040);
    CHECK_EQ(GWFW_FLAG_OFFLOAD_MASK,
             GWFW_OFFLOAD_ENTROPY | GWFW_OFFLOAD_LOW_CONFIDENCE | GWFW_OFFLOAD_MOTION);
}

static void test_motion(void)
{
    /* (0, 0, 64) is 1 g; (192, 0, 0) exactly 3 g; (110, 110, 110) is 190.53 LSB = 2976 mg;
       (111, 111, 111) is 192.26 LSB = 3004 mg; (-32768, -32768, -32768) the largest int16 */
    static const int16_t rest[] = {0, 0, 64, 1, -2, 63, 0, 1, 65};
    static const int16_t impact[] = {0, 0, 64, 192, 0, 0, 110, 110, 110, 0, 0, 64};
    static const int16_t diag[] = {111, 111, 111, 0, 0, 64};
    static const int16_t big[] = {-32768, -32768, -32768};

    CHECK_EQ(gwfw_acc_last_impact(rest, 3, 64, 3000), -1);
    CHECK_EQ(gwfw_acc_last_impact(impact, 4, 64, 3000), 1); /* exactly 3 g counts; 2976 not */
    CHECK_EQ(gwfw_acc_last_impact(impact, 4, 64, 2976), 2);
    CHECK_EQ(gwfw_acc_last_impact(impact, 4, 64, 2977), 1);
    CHECK_EQ(gwfw_acc_last_impact(impact, 4, 64, 3001), -1);
    CHECK_EQ(gwfw_acc_last_impact(diag, 2, 64, 3000), 0);
    CHECK_EQ(gwfw_acc_last_impact(big, 1, 65535, 65535), -1); /* (T*L)^2 near 2^64: no overflow */
    CHECK_EQ(gwfw_acc_last_impact(big, 1, 1, 65535), 0);
    CHECK_EQ(gwfw_acc_last_impact(rest, 3, 64, 0), 2); /* threshold 0: every sample */
    CHECK_EQ(gwfw_acc_last_impact(NULL, 3, 64, 3000), -1);
    CHECK_EQ(gwfw_acc_last_impact(rest, 3, 0, 3000), -1);

    /* the hold: a window starting up to hold_ms after the fall's impact, inclusive */
    CHECK_EQ(gwfw_offload_motion(26000, 1, 10000, 16000), GWFW_OFFLOAD_MOTION);
    CHECK_EQ(gwfw_offload_motion(26001, 1, 10000, 16000), 0);
    CHECK_EQ(gwfw_offload_motion(8000, 1, 10000, 16000), GWFW_OFFLOAD_MOTION); /* the candidate */
    CHECK_EQ(gwfw_offload_motion(8000, 0, 10000, 16000), 0); /* no fall yet */
    CHECK_EQ(gwfw_offload_motion(10000, 1, 10000, 0), GWFW_OFFLOAD_MOTION);
    /* motion only adds a reason: it is OR-ed into the entropy/confidence decision */
    CHECK_EQ(gwfw_offload_reason(5000, 0, 0, 10000) | gwfw_offload_motion(0, 1, 0, 16000),
             GWFW_FLAG_OFFLOAD_MASK);
}

/* n samples: x alternating mean + a, mean - a; y = 0; z = lsb (gravity). */
static void fill_square(int16_t *xyz, uint32_t n, int16_t mean, int16_t a, int16_t lsb)
{
    uint32_t i;

    for (i = 0; i < n; i++) {
        xyz[3u * i] = (int16_t)(i % 2u ? mean - a : mean + a);
        xyz[3u * i + 1u] = 0;
        xyz[3u * i + 2u] = lsb;
    }
}

static void test_motion_cg(void)
{
    static int16_t w[3 * 65535];
    static const int16_t half[] = {0, 0, 0, 1, 0, 0};           /* n 2: V = 1, q = 100 */
    static const int16_t ramp[] = {0, 0, 0, 1, 0, 0, 2, 0, 0};  /* n 3: V = 6, q = 244 */
    uint32_t i;

    /* a still wrist in any orientation: gravity is the mean, nothing deviates from it */
    for (i = 0; i < 256; i++) {
        w[3u * i] = 37;
        w[3u * i + 1u] = -45;
        w[3u * i + 2u] = 22;
    }
    CHECK_EQ(gwfw_motion_cg(w, 256, 64), 0);
    for (i = 0; i < 256; i++) {
        w[3u * i] = -32768;
        w[3u * i + 1u] = 32767;
        w[3u * i + 2u] = -32768;
    }
    CHECK_EQ(gwfw_motion_cg(w, 256, 1), 0);
    CHECK_EQ(gwfw_motion_cg(w, 1, 1), 0); /* one sample never deviates from itself */

    /* a square wave: x = 32 +- 32 LSB at 64 LSB/g is 0.5 g RMS: q = 3200 n, 6464n / 128n = 50 */
    fill_square(w, 256, 32, 32, 64);
    CHECK_EQ(gwfw_motion_cg(w, 256, 64), 50);
    /* a circle of radius 1 g, 4 samples a turn: x = (A, 0, -A, 0), y = (0, A, 0, -A), A = L:
       the variances are A^2/2 each, the RMS A = 1 g */
    for (i = 0; i < 256; i++) {
        static const int16_t c4[4] = {64, 0, -64, 0};
        w[3u * i] = c4[i % 4u];
        w[3u * i + 1u] = c4[(i + 3u) % 4u];
        w[3u * i + 2u] = 64;
    }
    CHECK_EQ(gwfw_motion_cg(w, 256, 64), 100);
    /* all three axes +-1 g in phase: sqrt(3) g; q = isqrt(10^4 * 3 * 256^2 * 64^2) = 2837792,
       (2 * 2837792 + 16384) / 32768 = 173 */
    for (i = 0; i < 3u * 256u; i++) {
        w[i] = (int16_t)((i / 3u) % 2u ? -64 : 64);
    }
    CHECK_EQ(gwfw_motion_cg(w, 256, 64), 173);

    /* saturation: 100 LSB/g, x = +-a is a g/100 RMS exactly */
    fill_square(w, 100, 0, 254, 100);
    CHECK_EQ(gwfw_motion_cg(w, 100, 100), 254);
    fill_square(w, 100, 0, 255, 100);
    CHECK_EQ(gwfw_motion_cg(w, 100, 100), GWFW_MOTION_CG_MAX);
    fill_square(w, 100, 0, 256, 100);
    CHECK_EQ(gwfw_motion_cg(w, 100, 100), 255);
    fill_square(w, 100, 0, 32767, 1); /* 32767 g */
    CHECK_EQ(gwfw_motion_cg(w, 100, 1), 255);

    /* the largest window of the widest values: n = 65535, every axis alternating -32768, 32767
       (32768 and 32767 of them): V = 3 n^2 * 32768 * 32767 ~ 1.38e19 (just under 2^64),
       10^4 V ~ 2^77; q = 371943727551; q / n^2 = 86.6 -> 87 at L = 65535, 173.2 at L = 32768 */
    for (i = 0; i < 3u * 65535u; i++) {
        w[i] = (int16_t)((i / 3u) % 2u ? 32767 : -32768);
    }
    CHECK_EQ(gwfw_motion_cg(w, 65535, 65535), 87);
    CHECK_EQ(gwfw_motion_cg(w, 65535, 32768), 173);
    CHECK_EQ(gwfw_motion_cg(w, 65535, 1000), 255);
    CHECK_EQ(gwfw_motion_cg(w, 65535, 1), 255);

    /* rounding, by the formula (2q + nL) / (2nL): exactly .5 rounds up ... */
    CHECK_EQ(gwfw_motion_cg(half, 2, 100), 1);  /* q / nL = 100 / 200 = 0.5 */
    CHECK_EQ(gwfw_motion_cg(half, 2, 101), 0);  /* 100 / 202 = 0.495 */
    CHECK_EQ(gwfw_motion_cg(half, 2, 99), 1);
    CHECK_EQ(gwfw_motion_cg(half, 2, 1), 50);   /* 0.5 g at 1 LSB/g */
    /* ... and the root is floored first: sqrt(60000) = 244.949 but q = 244, so 244 / 489 =
       0.49898 rounds to 0 although 244.949 / 489 = 0.50092; and 244 / 3 = 81.33 -> 81, not 82 */
    CHECK_EQ(gwfw_motion_cg(ramp, 3, 163), 0);
    CHECK_EQ(gwfw_motion_cg(ramp, 3, 1), 81);

    /* n = 0, bad arguments */
    CHECK_EQ(gwfw_motion_cg(w, 0, 64), 0);
    CHECK_EQ(gwfw_motion_cg(NULL, 0, 64), 0);
    CHECK_EQ(gwfw_motion_cg(NULL, 256, 64), 0);
    CHECK_EQ(gwfw_motion_cg(half, 2, 0), 0);

    /* the flag bits */
    CHECK_EQ(GWFW_FLAG_MOTION_REPORTED, 0x0080);
    CHECK_EQ(GWFW_FLAG_MOTION_REPORTED & GWFW_FLAG_OFFLOAD_MASK, 0); /* not an offload reason */
    CHECK_EQ(gwfw_motion_flags(0), 0x0080);
    CHECK_EQ(gwfw_motion_flags(1), 0x0180);
    CHECK_EQ(gwfw_motion_flags(173), 0xAD80);
    CHECK_EQ(gwfw_motion_flags(GWFW_MOTION_CG_MAX), 0xFF80);
    CHECK_EQ(gwfw_motion_flags(87) >> GWFW_MOTION_SHIFT, 87);
}

/* n samples at rest (0, 0, 64) with `noise` counts of alternating x, for the fall tests. */
static void fill_rest(int16_t *xyz, uint16_t n, int16_t noise)
{
    uint16_t i;

    for (i = 0; i < n; i++) {
        xyz[3u * i] = (int16_t)(i % 2u ? -noise : noise);
        xyz[3u * i + 1u] = 0;
        xyz[3u * i + 2u] = 64;
    }
}

static void set_sample(int16_t *xyz, uint16_t i, int16_t x, int16_t y, int16_t z)
{
    xyz[3u * i] = x;
    xyz[3u * i + 1u] = y;
    xyz[3u * i + 2u] = z;
}

static void test_fall(void)
{
    /* At 4 Hz an 8 s window is 32 samples; with the defaults the settle time is 8 samples, a
       block 4, and 2 blocks are needed: an impact at index k needs k + 8 + 8 <= 32. */
    static int16_t w[3 * 32];
    static int16_t wide[3 * 251];
    const struct gwfw_fall_params d = GWFW_FALL_PARAMS_DEFAULT;
    struct gwfw_fall_params p = d;
    uint16_t i;

    CHECK_EQ(d.impact_milli_g, 3000);
    CHECK_EQ(d.settle_ms, 2000);
    CHECK_EQ(d.still_ms, 2000);
    CHECK_EQ(d.block_ms, 1000);
    CHECK_EQ(d.moving_milli_g, 150);

    fill_rest(w, 32, 1);
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &d), -1); /* no impact */
    set_sample(w, 2, 192, 0, 0);                      /* exactly 3 g */
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &d), 2);
    set_sample(w, 6, -100, 90, 30); /* inside the settle time: not looked at */
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &d), 2);
    set_sample(w, 31, 100, 0, 0); /* after the last whole block: not looked at */
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &d), 2);
    set_sample(w, 29, 100, 0, 0); /* in the last whole block (26..29): it moves */
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &d), -1);
    set_sample(w, 29, 1, 0, 64);
    set_sample(w, 10, 0, 0, 160); /* in the first block after settling (10..13): it moves */
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &d), -1);

    /* the newest impact decides, and it needs room: k + 8 + 8 <= 32 */
    fill_rest(w, 32, 1);
    set_sample(w, 16, 0, 0, -192);
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &d), 16);
    set_sample(w, 17, 0, 0, -192);
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &d), -1); /* 25..28 is one block: too late */
    CHECK_EQ(gwfw_acc_last_impact(w, 32, 64, 3000), 17);
    set_sample(w, 17, 1, 0, 64);
    set_sample(w, 31, 0, 0, 192); /* an impact at the very end: no room, not even settling */
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &d), -1);
    p.still_ms = 0; /* no stillness asked for: the settle time must still fit */
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &p), -1);
    set_sample(w, 31, 1, 0, 64);
    set_sample(w, 24, 0, 0, 192);
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &p), 24);
    p = d;
    p.still_ms = 2001; /* ceil(2001 / 1000) = 3 blocks */
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &p), -1);
    fill_rest(w, 32, 1);
    set_sample(w, 12, 0, 0, 192);
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &p), 12); /* 20..31: 3 blocks */

    /* the moving bound exactly: lsb 1000, x alternating +-150 is a spread of 150 mg */
    p = d;
    fill_rest(w, 32, 150);
    for (i = 0; i < 32; i++) {
        w[3u * i + 2u] = 1000;
    }
    set_sample(w, 0, 3000, 0, 0);
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 1000, &p), -1); /* spread == moving_milli_g: moves */
    fill_rest(w, 32, 149);
    for (i = 0; i < 32; i++) {
        w[3u * i + 2u] = 1000;
    }
    set_sample(w, 0, 3000, 0, 0);
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 1000, &p), 0);
    p.moving_milli_g = 149;
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 1000, &p), -1);
    p.moving_milli_g = 0; /* every block moves, even a constant one */
    fill_rest(w, 32, 0);
    set_sample(w, 0, 192, 0, 0);
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &p), -1);

    /* past 64 bits: 250 Hz, lsb 500, one block of 250 samples alternating x = +-30000; with
       moving 60000 mg the bound is 30000 LSB: 10^6 * V = (n M L)^2 = 5.625e19 > 2^64 */
    p.impact_milli_g = 65535; /* 32767.5 LSB: (32767, 32767, 0) is one, +-30000 is not */
    p.settle_ms = 4;          /* ceil(4 * 250 / 1000) = 1 sample */
    p.still_ms = 1000;
    p.block_ms = 1000;
    p.moving_milli_g = 60000;
    set_sample(wide, 0, 32767, 32767, 0);
    for (i = 1; i < 251; i++) {
        set_sample(wide, i, (int16_t)(i % 2u ? 30000 : -30000), 0, 0);
    }
    CHECK_EQ(gwfw_fall_impact(wide, 251, 250, 500, &p), -1); /* equal: moves */
    for (i = 1; i < 251; i++) {
        set_sample(wide, i, (int16_t)(i % 2u ? 29999 : -29999), 0, 0);
    }
    CHECK_EQ(gwfw_fall_impact(wide, 251, 250, 500, &p), 0);
    for (i = 1; i < 251; i++) {
        set_sample(wide, i, (int16_t)(i % 2u ? 3816 : -3816), 0, 0);
    }
    CHECK_EQ(gwfw_fall_impact(wide, 251, 250, 500, &p), 0); /* modulo 2^64 it would move */
    p.moving_milli_g = 30000; /* 15000 LSB: (n M L)^2 < 2^64 < 10^6 V */
    for (i = 1; i < 251; i++) {
        set_sample(wide, i, (int16_t)(i % 2u ? 20000 : -20000), 0, 0);
    }
    CHECK_EQ(gwfw_fall_impact(wide, 251, 250, 500, &p), -1); /* modulo 2^64 it would not */

    /* bad arguments */
    CHECK_EQ(gwfw_fall_impact(NULL, 32, 4, 64, &d), -1);
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, NULL), -1);
    CHECK_EQ(gwfw_fall_impact(w, 32, 0, 64, &d), -1);
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 0, &d), -1);
    p = d;
    p.block_ms = 0;
    CHECK_EQ(gwfw_fall_impact(w, 32, 4, 64, &p), -1);
}

static int decode(const uint8_t *b, size_t n, struct gwfw_control *c)
{
    return gwfw_decode_control(b, n, c);
}

static void test_control(void)
{
    static const uint8_t time_sync[] = {1, 1, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11};
    static const uint8_t policy[] = {1, 2, 0xAC, 0x0D, 0x10, 0x27};
    static const uint8_t pruning[] = {1, 3, 100};
    static const uint8_t resend[] = {1, 4, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x01};
    static const uint8_t rest_limit[] = {1, 5, 0xB0, 0x36}; /* 14000: 140 bpm */
    struct gwfw_control c;
    uint8_t b[32];

    CHECK_EQ(decode(time_sync, sizeof time_sync, &c), GWFW_OK);
    CHECK_EQ(c.opcode, GWFW_OP_TIME_SYNC);
    CHECK(c.unix_ms == 0x1122334455667788ull);
    CHECK_EQ(decode(policy, sizeof policy, &c), GWFW_OK);
    CHECK_EQ(c.tau_mbits, 3500);
    CHECK_EQ(c.min_conf_e4, 10000);
    CHECK_EQ(c.unix_ms, 0); /* fields of other opcodes are zero */
    CHECK_EQ(decode(pruning, sizeof pruning, &c), GWFW_OK);
    CHECK_EQ(c.pruning_pct, 100);
    CHECK_EQ(decode(resend, sizeof resend, &c), GWFW_OK);
    CHECK_EQ(c.first_seq, 0xFFFFFFFFu);
    CHECK_EQ(c.count, 256);
    CHECK_EQ(decode(rest_limit, sizeof rest_limit, &c), GWFW_OK);
    CHECK_EQ(c.opcode, GWFW_OP_SET_REST_LIMIT);
    CHECK_EQ(c.rest_limit_cbpm, 14000);
    CHECK_EQ(gwfw_encode_control(&c, b, sizeof b), 4);
    CHECK(memcmp(b, rest_limit, 4) == 0);
    CHECK_EQ(decode(resend, sizeof resend, &c), GWFW_OK);

    /* encode(decode(x)) == x */
    CHECK_EQ(gwfw_encode_control(&c, b, sizeof b), 8);
    CHECK(memcmp(b, resend, 8) == 0);
    CHECK_EQ(decode(time_sync, sizeof time_sync, &c), GWFW_OK);
    CHECK_EQ(gwfw_encode_control(&c, b, sizeof b), 10);
    CHECK(memcmp(b, time_sync, 10) == 0);
    CHECK_EQ(gwfw_encode_control(&c, b, 9), GWFW_E_BUFFER);

    /* rejections, in the decoder's order of checks */
    memcpy(b, policy, sizeof policy);
    CHECK_EQ(decode(b, 0, &c), GWFW_E_LENGTH);
    CHECK_EQ(decode(b, 1, &c), GWFW_E_LENGTH);
    b[0] = 2;
    CHECK_EQ(decode(b, sizeof policy, &c), GWFW_E_VERSION);
    CHECK_EQ(c.opcode, 0); /* *out is cleared on error */
    b[0] = 0;
    CHECK_EQ(decode(b, sizeof policy, &c), GWFW_E_VERSION);
    b[0] = 1;
    b[1] = 0;
    CHECK_EQ(decode(b, sizeof policy, &c), GWFW_E_OPCODE);
    b[1] = 6;
    CHECK_EQ(decode(b, sizeof policy, &c), GWFW_E_OPCODE);
    b[1] = 2;
    CHECK_EQ(decode(b, 5, &c), GWFW_E_LENGTH);
    CHECK_EQ(decode(b, 7, &c), GWFW_E_LENGTH);
    CHECK_EQ(decode(time_sync, 9, &c), GWFW_E_LENGTH);
    CHECK_EQ(decode(pruning, 2, &c), GWFW_E_LENGTH);
    CHECK_EQ(decode(resend, 7, &c), GWFW_E_LENGTH);
    CHECK_EQ(decode(rest_limit, 3, &c), GWFW_E_LENGTH);
    memcpy(b, rest_limit, sizeof rest_limit);
    b[2] = 0x31;
    b[3] = 0x75; /* 30001 */
    CHECK_EQ(decode(b, 4, &c), GWFW_E_RANGE);
    b[2] = 0x30; /* 30000, the highest heart rate on the wire */
    CHECK_EQ(decode(b, 4, &c), GWFW_OK);
    memcpy(b, policy, sizeof policy);
    b[4] = 0x11; /* min_conf 10001 */
    CHECK_EQ(decode(b, sizeof policy, &c), GWFW_E_RANGE);
    b[0] = 1;
    b[1] = 3;
    b[2] = 101;
    CHECK_EQ(decode(b, 3, &c), GWFW_E_RANGE);
    memcpy(b, resend, sizeof resend);
    b[6] = 0;
    b[7] = 0;
    CHECK_EQ(decode(b, 8, &c), GWFW_E_RANGE);
    b[6] = 1;
    b[7] = 1; /* 257 */
    CHECK_EQ(decode(b, 8, &c), GWFW_E_RANGE);
    CHECK_EQ(decode(NULL, 8, &c), GWFW_E_NULL);

    memset(&c, 0, sizeof c);
    c.opcode = 9;
    CHECK_EQ(gwfw_encode_control(&c, b, sizeof b), GWFW_E_OPCODE);
    c.opcode = GWFW_OP_RESEND;
    c.count = 0;
    CHECK_EQ(gwfw_encode_control(&c, b, sizeof b), GWFW_E_RANGE);
}

static void test_info(void)
{
    struct gwfw_info inf;
    uint8_t b[GWFW_INFO_MAX + 8];
    static const char id32[] = "abcdefghijklmnopqrstuvwxyz.-_019";

    memset(&inf, 0, sizeof inf);
    inf.fw_major = 1;
    inf.fw_minor = 2;
    inf.fw_patch = 3;
    inf.boot_id = 0xA1B2C3D4u;
    inf.pruning_pct = 40;
    inf.bvp_rate_hz = 64;
    inf.acc_rate_hz = 32;
    inf.sample_format = GWFW_SAMPLE_INT16;
    inf.acc_lsb_per_g = 64;
    inf.tau_mbits = 3500;
    inf.min_conf_e4 = 6000;
    inf.next_seq = 0x01020304u;
    inf.model_id = "m1";
    inf.model_id_len = 2;
    CHECK_EQ(gwfw_encode_info(&inf, b, sizeof b), 25);
    CHECK_EQ(b[0], 1);
    CHECK_EQ(b[1], 1);
    CHECK_EQ(b[3], 3);
    CHECK_EQ(rd32(b + 4), 0xA1B2C3D4u);
    CHECK_EQ(b[8], 40);
    CHECK_EQ(b[9], 64);
    CHECK_EQ(b[10], 32);
    CHECK_EQ(b[11], 1);
    CHECK_EQ(rd16(b + 12), 64);
    CHECK_EQ(rd16(b + 14), 3500);
    CHECK_EQ(rd16(b + 16), 6000);
    CHECK_EQ(rd32(b + 18), 0x01020304u);
    CHECK_EQ(b[22], 2);
    CHECK(memcmp(b + 23, "m1", 2) == 0);
    CHECK_EQ(gwfw_encode_info(&inf, b, 24), GWFW_E_BUFFER);

    inf.model_id = id32;
    inf.model_id_len = 32;
    CHECK_EQ(gwfw_encode_info(&inf, b, sizeof b), 55);
    inf.model_id_len = 33;
    CHECK_EQ(gwfw_encode_info(&inf, b, sizeof b), GWFW_E_RANGE);
    inf.model_id = "bad id";
    inf.model_id_len = 6;
    CHECK_EQ(gwfw_encode_info(&inf, b, sizeof b), GWFW_E_RANGE);
    inf.model_id = NULL;
    inf.model_id_len = 0;
    CHECK_EQ(gwfw_encode_info(&inf, b, sizeof b), 23);
    inf.sample_format = 3;
    CHECK_EQ(gwfw_encode_info(&inf, b, sizeof b), GWFW_E_RANGE);
    inf.sample_format = GWFW_SAMPLE_INT8;
    inf.pruning_pct = 101;
    CHECK_EQ(gwfw_encode_info(&inf, b, sizeof b), GWFW_E_RANGE);
    inf.pruning_pct = 0;
    inf.min_conf_e4 = 10001;
    CHECK_EQ(gwfw_encode_info(&inf, b, sizeof b), GWFW_E_RANGE);
    inf.min_conf_e4 = 0;
    inf.bvp_rate_hz = 0;
    CHECK_EQ(gwfw_encode_info(&inf, b, sizeof b), GWFW_E_RANGE);
}

/* Deterministic content for message `seq` of length len, to verify what the ring returns. */
static void fill(uint8_t *m, size_t len, uint32_t seq)
{
    size_t i;
    for (i = 0; i < len; i++) {
        m[i] = (uint8_t)(seq * 31u + i * 7u + (i >> 8));
    }
}

static void test_ring(void)
{
    static uint8_t arena[4096];
    static uint8_t m[GWFW_MAX_MESSAGE];
    static uint8_t expect[GWFW_MAX_MESSAGE];
    struct gwfw_ring r;
    uint8_t *got;
    size_t len;
    uint32_t seq;
    uint32_t rng = 12345u;
    uint32_t newest_seq;

    CHECK_EQ(gwfw_ring_init(&r, arena, 0), GWFW_E_BUFFER);
    CHECK_EQ(gwfw_ring_init(&r, arena, sizeof arena), GWFW_OK);
    CHECK_EQ(gwfw_ring_get(&r, 1, &got, &len), GWFW_E_NOT_FOUND);
    CHECK(got == NULL);

    /* put / get */
    fill(m, 32, 7);
    CHECK_EQ(gwfw_ring_put(&r, 7, m, 32), GWFW_OK);
    CHECK_EQ(gwfw_ring_get(&r, 7, &got, &len), GWFW_OK);
    CHECK_EQ(len, 32);
    CHECK(memcmp(got, m, 32) == 0);
    CHECK_EQ(gwfw_ring_get(&r, 8, &got, &len), GWFW_E_NOT_FOUND);

    /* the same seq again: the newest copy wins */
    m[0] ^= 0xFFu;
    CHECK_EQ(gwfw_ring_put(&r, 7, m, 32), GWFW_OK);
    CHECK_EQ(gwfw_ring_get(&r, 7, &got, &len), GWFW_OK);
    CHECK_EQ(got[0], m[0]);

    /* more messages than slots: the oldest are overwritten, the newest 64 remain */
    CHECK_EQ(gwfw_ring_init(&r, arena, sizeof arena), GWFW_OK);
    for (seq = 0; seq < GWFW_RING_SLOTS + 10u; seq++) {
        fill(m, 32, seq);
        CHECK_EQ(gwfw_ring_put(&r, seq, m, 32), GWFW_OK);
    }
    CHECK_EQ(gwfw_ring_count(&r), GWFW_RING_SLOTS);
    CHECK_EQ(r.evicted, 10);
    for (seq = 0; seq < GWFW_RING_SLOTS + 10u; seq++) {
        const int rc = gwfw_ring_get(&r, seq, &got, &len);
        if (seq < 10u) {
            CHECK_EQ(rc, GWFW_E_NOT_FOUND);
        } else {
            fill(expect, 32, seq);
            CHECK_EQ(rc, GWFW_OK);
            CHECK(len == 32 && memcmp(got, expect, 32) == 0);
        }
    }

    /* arena exhaustion: 2604-byte windows in a 4096-byte arena: only the newest one fits */
    CHECK_EQ(gwfw_ring_init(&r, arena, sizeof arena), GWFW_OK);
    fill(m, 2604, 1);
    CHECK_EQ(gwfw_ring_put(&r, 1, m, 2604), GWFW_OK);
    fill(m, 2604, 2);
    CHECK_EQ(gwfw_ring_put(&r, 2, m, 2604), GWFW_OK);
    CHECK_EQ(gwfw_ring_count(&r), 1);
    CHECK_EQ(gwfw_ring_get(&r, 1, &got, &len), GWFW_E_NOT_FOUND);
    CHECK_EQ(gwfw_ring_get(&r, 2, &got, &len), GWFW_OK);
    CHECK(len == 2604 && memcmp(got, m, 2604) == 0);
    CHECK_EQ(gwfw_ring_put(&r, 3, m, 4097), GWFW_E_TOO_LONG);
    CHECK_EQ(gwfw_ring_put(&r, 3, m, 0), GWFW_E_LENGTH);
    {
        static uint8_t small[100];
        struct gwfw_ring r2;
        CHECK_EQ(gwfw_ring_init(&r2, small, sizeof small), GWFW_OK);
        CHECK_EQ(gwfw_ring_put(&r2, 1, m, 101), GWFW_E_BUFFER);
        CHECK_EQ(gwfw_ring_put(&r2, 1, m, 100), GWFW_OK);
    }

    /* random lengths, 20000 puts: after every put, the newest message is there, everything
     * found is byte-exact, and what is found is exactly a run of the newest seqs (FIFO) */
    CHECK_EQ(gwfw_ring_init(&r, arena, sizeof arena), GWFW_OK);
    for (newest_seq = 1000; newest_seq < 21000u; newest_seq++) {
        uint32_t back;
        int missing = 0;
        int bad = 0;
        int present = 0;

        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        len = (rng % 8u == 0u) ? 1000u + rng % 1700u : 1u + rng % 300u;
        fill(m, len, newest_seq);
        if (gwfw_ring_put(&r, newest_seq, m, len) != GWFW_OK) {
            bad++;
        }
        for (back = 0; back < GWFW_RING_SLOTS + 2u; back++) {
            const uint32_t s = newest_seq - back;
            size_t got_len;
            if (gwfw_ring_get(&r, s, &got, &got_len) == GWFW_OK) {
                if (missing) {
                    bad++; /* an older one survived a newer one */
                }
                present++;
                fill(expect, got_len, s);
                if (memcmp(got, expect, got_len) != 0 || got < arena ||
                    got + got_len > arena + sizeof arena) {
                    bad++;
                }
            } else {
                missing = 1;
            }
        }
        if (bad || present != gwfw_ring_count(&r) || present == 0) {
            CHECK(bad == 0);
            CHECK_EQ(present, gwfw_ring_count(&r));
            break;
        }
    }
    CHECK_EQ(newest_seq, 21000u);
}

int main(void)
{
    test_crc();
    test_summary();
    test_window();
    test_mark_resent();
    test_fragments();
    test_entropy();
    test_offload_confidence();
    test_policy();
    test_motion();
    test_motion_cg();
    test_fall();
    test_control();
    test_info();
    test_ring();
    if (failures != 0) {
        fprintf(stderr, "test_gwfw: %d of %d checks FAILED\n", failures, checks);
        return 1;
    }
    printf("test_gwfw: all %d checks passed\n", checks);
    return 0;
}
