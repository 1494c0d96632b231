/*
 * fall.c -- the motion-offload vectors: the fall decision of libgwfw on synthetic accelerometer
 * windows and streams (firmware_stub/README.md, "Fall vectors").
 *
 *   fall [PATH]      write the vectors to PATH, or to stdout
 *   fall --eval      read windows from stdin, one per line:
 *                      <rate_hz> <lsb_per_g> <impact_mg> <settle_ms> <still_ms> <block_ms>
 *                      <moving_mg> <hex of int16 little-endian x, y, z triples>
 *                    and print "<last_impact> <fall_impact> <motion_cg>" for each (-1: none;
 *                    motion_cg is gwfw_motion_cg of the window, 0..255)
 *
 * Everything is deterministic: xorshift32 with a fixed seed, no clock. The output is committed
 * as vectors/fall.txt; tests/test_firmware_stub.py regenerates it, compares it byte for byte
 * with the committed copy and replays every vector with gatewayd.signals.offload. Every
 * decision printed comes from the library, not from this file.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gwfw.h"
#include "synth.h"

#define SEED 0x51F7A11u
#define PI 3.14159265358979323846
#define MAX_SAMPLES 4096u
#define MAX_LINE (64u + 12u * MAX_SAMPLES + 2u) /* 7 numbers, then 12 hex digits a triple */

static uint32_t prng = SEED;
static int16_t acc[3u * MAX_SAMPLES];

static int16_t clamp16(double v)
{
    const double r = floor(v + 0.5);
    return (int16_t)(r > 32767.0 ? 32767.0 : (r < -32768.0 ? -32768.0 : r));
}

static void set(uint32_t i, double x, double y, double z)
{
    acc[3u * i] = clamp16(x);
    acc[3u * i + 1u] = clamp16(y);
    acc[3u * i + 2u] = clamp16(z);
}

/* Walking: arm swing at 0.9 Hz, under 2 g, with a little noise (lsb 64). */
static void walk(uint32_t from, uint32_t to, double rate)
{
    uint32_t i;

    for (i = from; i < to; i++) {
        const double t = i / rate;
        set(i, 40.0 * sin(2.0 * PI * 0.9 * t) + synth_uniform(&prng, 3),
            20.0 * sin(2.0 * PI * 1.8 * t) + synth_uniform(&prng, 3),
            64.0 + 15.0 * sin(2.0 * PI * 1.8 * t + 1.0) + synth_uniform(&prng, 3));
    }
}

/* Running: arm swing at 1.4 Hz of about 1.2 g and a 3.6 g heel strike every 1/2.8 s. */
static void run(uint32_t from, uint32_t to, double rate)
{
    uint32_t i;

    for (i = from; i < to; i++) {
        const double t = i / rate;
        set(i, 77.0 * sin(2.0 * PI * 1.4 * t) + synth_uniform(&prng, 6),
            30.0 * sin(2.0 * PI * 2.8 * t) + synth_uniform(&prng, 6),
            64.0 + 40.0 * sin(2.0 * PI * 2.8 * t) + synth_uniform(&prng, 6));
        if (fmod(t * 2.8, 1.0) < 1.0 / (rate / 2.8)) {
            set(i, 60.0, -90.0, 200.0); /* |a| = 227 LSB = 3.5 g */
        }
    }
}

/* Lying still, the wrist on the floor: about (0.1, 0.95, -0.3) g and +-1 LSB of noise. */
static void lie(uint32_t from, uint32_t to)
{
    uint32_t i;

    for (i = from; i < to; i++) {
        set(i, 6 + synth_uniform(&prng, 1), 61 + synth_uniform(&prng, 1),
            -19 + synth_uniform(&prng, 1));
    }
}

/* Half a second of free fall before sample `at` (gravity mostly gone), then the impact. */
static void fall_at(uint32_t at, double rate, double x, double y, double z)
{
    uint32_t i;
    const uint32_t half = (uint32_t)(rate / 2.0);

    for (i = at >= half ? at - half : 0u; i < at; i++) {
        set(i, acc[3u * i] * 0.1, acc[3u * i + 1u] * 0.1, acc[3u * i + 2u] * 0.1);
    }
    set(at, x, y, z);
}

static void print_params(FILE *f, uint8_t rate, uint16_t lsb, const struct gwfw_fall_params *p)
{
    fprintf(f, "rate %u\nlsb %u\nparams %u %u %u %u %u\n", (unsigned)rate, (unsigned)lsb,
            (unsigned)p->impact_milli_g, (unsigned)p->settle_ms, (unsigned)p->still_ms,
            (unsigned)p->block_ms, (unsigned)p->moving_milli_g);
}

static void print_acc(FILE *f, uint32_t n)
{
    static uint8_t bytes[6u * MAX_SAMPLES];
    uint32_t i;

    for (i = 0; i < 3u * n; i++) {
        const uint16_t v = (uint16_t)acc[i];
        bytes[2u * i] = (uint8_t)(v & 0xFFu);
        bytes[2u * i + 1u] = (uint8_t)(v >> 8);
    }
    vec_print_hex(f, "acc", bytes, 6u * n);
}

/* One window: the samples, gwfw_acc_last_impact and gwfw_fall_impact. */
static void emit_window(FILE *f, const char *comment, const char *name, uint16_t n, uint8_t rate,
                        uint16_t lsb, const struct gwfw_fall_params *p)
{
    fprintf(f, "# %s\nfall %s\n", comment, name);
    print_params(f, rate, lsb, p);
    print_acc(f, n);
    fprintf(f, "last_impact %ld\n", (long)gwfw_acc_last_impact(acc, n, lsb, p->impact_milli_g));
    fprintf(f, "fall_impact %ld\nend\n", (long)gwfw_fall_impact(acc, n, rate, lsb, p));
}

/* A stream cut into windows as the firmware does, with its state: the impact time of the newest
 * fall candidate, on the uptime clock (here: ms since the stream started). */
static void emit_stream(FILE *f, const char *comment, const char *name, uint32_t n, uint8_t rate,
                        uint16_t lsb, const struct gwfw_fall_params *p, uint16_t window,
                        uint16_t step, uint32_t hold_ms)
{
    uint32_t start;
    int have_fall = 0;
    uint64_t fall_ms = 0u;

    fprintf(f, "# %s\nstream %s\n", comment, name);
    print_params(f, rate, lsb, p);
    fprintf(f, "window %u %u\nhold %lu\n", (unsigned)window, (unsigned)step,
            (unsigned long)hold_ms);
    print_acc(f, n);
    fputs("motion ", f);
    for (start = 0; start + window <= n; start += step) {
        const uint64_t start_ms = (uint64_t)start * 1000u / rate;
        const int32_t k = gwfw_fall_impact(acc + 3u * start, window, rate, lsb, p);
        if (k >= 0) {
            fall_ms = start_ms + (uint64_t)k * 1000u / rate;
            have_fall = 1;
        }
        fputc(gwfw_offload_motion(start_ms, have_fall, fall_ms, hold_ms) ? '1' : '0', f);
    }
    fputs("\nend\n", f);
}

static void emit_all(FILE *f)
{
    const struct gwfw_fall_params d = GWFW_FALL_PARAMS_DEFAULT;
    struct gwfw_fall_params p;
    uint32_t i;

    fputs("# gatewayd motion-offload vectors: the fall decision of libgwfw.\n"
          "# Written by firmware_stub/build/fall (make -C firmware_stub vectors): do not edit.\n"
          "# tests/test_firmware_stub.py replays them with gatewayd.signals.offload.\n",
          f);

    /* 8 s windows at 32 Hz, 64 LSB/g, int16, the default parameters */
    walk(0, 48, 32.0);
    fall_at(48, 32.0, -200.0, 180.0, 150.0); /* 308 LSB = 4.8 g */
    lie(49, 256);
    emit_window(f, "a fall: walking, free fall, an impact at 1.5 s, then lying still",
                "fall", 256, 32, 64, &d);

    walk(0, 40, 32.0);
    fall_at(40, 32.0, 210.0, -150.0, 100.0);
    for (i = 41; i < 56; i++) {
        set(i, 40.0 * sin(i * 1.3), 50.0 * cos(i * 0.7), -30.0); /* rolling */
    }
    set(56, -120.0, 150.0, -80.0); /* a bounce of 3.2 g, the newest impact */
    lie(57, 256);
    emit_window(f, "a fall with a bounce 0.5 s after the impact: the newest impact decides",
                "fall_bounce", 256, 32, 64, &d);

    walk(0, 160, 32.0);
    fall_at(160, 32.0, -200.0, 180.0, 150.0);
    lie(161, 256);
    emit_window(f, "a fall 5 s into the window: too late (3 s follow it, 4 s are needed)",
                "fall_late", 256, 32, 64, &d);

    walk(0, 16, 32.0);
    fall_at(16, 32.0, -200.0, 180.0, 150.0);
    lie(17, 192);
    walk(192, 256, 32.0);
    emit_window(f, "an impact, lying still, then walking away in the last 2 s: it moves",
                "fall_then_up", 256, 32, 64, &d);

    run(0, 256, 32.0);
    emit_window(f, "running: a 3.5 g heel strike every step, never still", "running", 256, 32,
                64, &d);

    lie(0, 16);
    set(16, 0.0, 0.0, 256.0); /* 4 g: a clap, a slap on a table */
    run(17, 256, 32.0);
    for (i = 17; i < 256; i++) {
        if (acc[3u * i + 2u] == 200) {
            set(i, 60.0, -60.0, 120.0); /* softer steps: no further impact */
        }
    }
    emit_window(f, "an impact early in the window, then running without impacts: it moves",
                "impact_then_running", 256, 32, 64, &d);

    walk(0, 48, 32.0); /* within -128..127, like lie(): the whole window fits int8 */
    fall_at(48, 32.0, 127.0, -128.0, 127.0); /* int8 saturated on every axis: 3.44 g */
    lie(49, 256);
    emit_window(f, "a fall recorded in int8 (64 LSB/g): every axis saturates, |a| = 3.44 g",
                "fall_int8_range", 256, 32, 64, &d);

    /* the moving bound, exactly: 1000 LSB/g, x alternating +-150 LSB is a spread of 150 mg */
    for (i = 0; i < 256; i++) {
        set(i, i % 2u ? -150.0 : 150.0, 0.0, 1000.0);
    }
    set(0, 3000.0, 0.0, 0.0);
    emit_window(f, "spread exactly 150 mg after the impact (1000 LSB/g): that moves",
                "spread_at_bound", 256, 32, 1000, &d);
    for (i = 1; i < 256; i++) {
        set(i, i % 2u ? -149.0 : 149.0, 0.0, 1000.0);
    }
    emit_window(f, "spread 149 mg after the impact: not moving, a candidate", "spread_below_bound",
                256, 32, 1000, &d);

    /* past 64 bits: 250 Hz, 500 LSB/g, one 250-sample block of x = +-30000 against a bound of
       60000 mg = 30000 LSB: both sides of the comparison are 5.625e19 > 2^64 */
    p.impact_milli_g = 65535;
    p.settle_ms = 4;
    p.still_ms = 1000;
    p.block_ms = 1000;
    p.moving_milli_g = 60000;
    set(0, 32767.0, 32767.0, 0.0);
    for (i = 1; i < 251; i++) {
        set(i, i % 2u ? 30000.0 : -30000.0, 0.0, 0.0);
    }
    emit_window(f, "128-bit comparison at equality: moves", "wide_at_bound", 251, 250, 500, &p);
    for (i = 1; i < 251; i++) {
        set(i, i % 2u ? 29999.0 : -29999.0, 0.0, 0.0);
    }
    emit_window(f, "128-bit comparison one LSB below: a candidate", "wide_below_bound", 251, 250,
                500, &p);
    for (i = 1; i < 251; i++) {
        set(i, i % 2u ? 3816.0 : -3816.0, 0.0, 0.0);
    }
    emit_window(f, "x = +-3816: still; compared modulo 2^64 it would move", "wide_wrap", 251, 250,
                500, &p);

    /* another rate and rounding: 25 Hz, settle 1500 ms = ceil(37.5) = 38 samples, still 2500 ms
       = 3 blocks of 25 */
    p = d;
    p.settle_ms = 1500;
    p.still_ms = 2500;
    walk(0, 30, 25.0);
    fall_at(30, 25.0, -200.0, 180.0, 150.0);
    lie(31, 200);
    emit_window(f, "25 Hz, settle 1.5 s, still 2.5 s: a fall 1.2 s into the window", "fall_25hz",
                200, 25, 64, &p);

    /* streams: 8 s windows every 2 s, as the wearable cuts them */
    walk(0, 640, 32.0);
    fall_at(640, 32.0, -200.0, 180.0, 150.0);
    lie(641, 1920);
    emit_stream(f, "walking, a fall at 20 s, lying still to 60 s: offloaded from the window "
                   "that shows the stillness until 16 s after the impact",
                "stream_walk_fall", 1920, 32, 64, &d, 256, 64, GWFW_MOTION_HOLD_MS);
    run(0, 1280, 32.0);
    emit_stream(f, "40 s of running: never offloaded for motion", "stream_running", 1280, 32, 64,
                &d, 256, 64, GWFW_MOTION_HOLD_MS);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/* --eval: one window per stdin line, answered with "<last_impact> <fall_impact> <motion_cg>". */
static int eval_stdin(void)
{
    static char line[MAX_LINE];
    unsigned rate, lsb, impact, settle, still, block, moving;
    int used;

    while (fgets(line, sizeof line, stdin) != NULL) {
        struct gwfw_fall_params p;
        const char *hex;
        size_t len, i;
        uint16_t n;

        if (sscanf(line, "%u %u %u %u %u %u %u %n", &rate, &lsb, &impact, &settle, &still, &block,
                   &moving, &used) != 7 || rate > 255u || lsb > 65535u || impact > 65535u ||
            settle > 65535u || still > 65535u || block > 65535u || moving > 65535u) {
            fprintf(stderr, "fall: bad line: %s", line);
            return 2;
        }
        hex = line + used;
        len = strcspn(hex, "\r\n");
        if (len % 12u != 0u || len / 12u > MAX_SAMPLES) {
            fprintf(stderr, "fall: the samples must be whole x, y, z triples (at most %u)\n",
                    MAX_SAMPLES);
            return 2;
        }
        for (i = 0; i < len / 4u; i++) {
            const int a = hexval(hex[4u * i]), b = hexval(hex[4u * i + 1u]);
            const int c = hexval(hex[4u * i + 2u]), d = hexval(hex[4u * i + 3u]);
            if (a < 0 || b < 0 || c < 0 || d < 0) {
                fputs("fall: bad hex\n", stderr);
                return 2;
            }
            acc[i] = (int16_t)(uint16_t)((unsigned)(a << 4 | b) | (unsigned)(c << 4 | d) << 8);
        }
        p.impact_milli_g = (uint16_t)impact;
        p.settle_ms = (uint16_t)settle;
        p.still_ms = (uint16_t)still;
        p.block_ms = (uint16_t)block;
        p.moving_milli_g = (uint16_t)moving;
        n = (uint16_t)(len / 12u);
        printf("%ld %ld %u\n", (long)gwfw_acc_last_impact(acc, n, (uint16_t)lsb, (uint16_t)impact),
               (long)gwfw_fall_impact(acc, n, (uint8_t)rate, (uint16_t)lsb, &p),
               (unsigned)gwfw_motion_cg(acc, n, (uint16_t)lsb));
    }
    return fflush(stdout) == 0 && !ferror(stdin) ? 0 : 1;
}

int main(int argc, char **argv)
{
    FILE *f = stdout;

    if (argc == 2 && strcmp(argv[1], "--eval") == 0) {
        return eval_stdin();
    }
    if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
        fprintf(stderr, "usage: fall [PATH]   (writes the fall vectors to PATH or stdout)\n"
                        "       fall --eval   (decides the windows given on stdin)\n");
        return 2;
    }
    if (argc == 2) {
        f = fopen(argv[1], "wb");
        if (f == NULL) {
            perror(argv[1]);
            return 1;
        }
    }
    emit_all(f);
    if (fflush(f) != 0 || ferror(f) || (f != stdout && fclose(f) != 0)) {
        perror("fall: write");
        return 1;
    }
    return 0;
}
