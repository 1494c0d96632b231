/* synth.c -- see synth.h. Host only: stdio and libm's sin are fine here. */
#include "synth.h"

#include <math.h>

#include "gwfw.h"

#define SYNTH_PI 3.14159265358979323846

uint32_t synth_xorshift32(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

int32_t synth_uniform(uint32_t *state, int32_t amp)
{
    if (amp <= 0) {
        return 0;
    }
    return (int32_t)(synth_xorshift32(state) % (uint32_t)(2 * amp + 1)) - amp;
}

static int16_t clamp16(double v)
{
    const double r = round(v);
    if (r > 32767.0) {
        return 32767;
    }
    if (r < -32768.0) {
        return -32768;
    }
    return (int16_t)r;
}

void synth_bvp(int16_t *out, size_t n, double rate_hz, double a1, double a2, int32_t noise_amp,
               int gaussian, uint32_t *state)
{
    size_t i;

    for (i = 0; i < n; i++) {
        const double t = (double)i / rate_hz;
        double noise;
        if (gaussian) {
            noise = (double)(synth_uniform(state, noise_amp) + synth_uniform(state, noise_amp) +
                             synth_uniform(state, noise_amp) + synth_uniform(state, noise_amp)) /
                    2.0;
        } else {
            noise = (double)synth_uniform(state, noise_amp);
        }
        out[i] = clamp16(a1 * sin(2.0 * SYNTH_PI * 1.2 * t) + a2 * sin(2.0 * SYNTH_PI * 2.4 * t) +
                         noise);
    }
}

void synth_acc(int16_t *xyz, size_t n, int16_t lsb_per_g, int32_t noise_amp, uint32_t *state)
{
    size_t i;

    for (i = 0; i < n; i++) {
        xyz[3 * i + 0] = (int16_t)synth_uniform(state, noise_amp);
        xyz[3 * i + 1] = (int16_t)synth_uniform(state, noise_amp);
        xyz[3 * i + 2] = (int16_t)(lsb_per_g + synth_uniform(state, noise_amp));
    }
}

static void print_hex(FILE *f, const uint8_t *data, size_t len)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < len; i++) {
        fputc(digits[data[i] >> 4], f);
        fputc(digits[data[i] & 0x0Fu], f);
    }
}

void vec_print_hex(FILE *f, const char *key, const uint8_t *data, size_t len)
{
    fprintf(f, "%s ", key);
    print_hex(f, data, len);
    fputc('\n', f);
}

int vec_print_message(FILE *f, const char *name, uint16_t mtu, const uint8_t *msg, size_t len)
{
    struct gwfw_frag_iter it;
    uint8_t frag[GWFW_MAX_FRAGMENT];
    uint32_t seq;
    int count;
    int n;

    if (len < GWFW_HEADER_SIZE) {
        return GWFW_E_LENGTH;
    }
    seq = (uint32_t)msg[4] | ((uint32_t)msg[5] << 8) | ((uint32_t)msg[6] << 16) |
          ((uint32_t)msg[7] << 24);
    count = gwfw_frag_init(&it, msg, len, seq, mtu);
    if (count < 0) {
        return count;
    }
    fprintf(f, "vector %s\n", name);
    fprintf(f, "mtu %u\n", (unsigned)mtu);
    vec_print_hex(f, "message", msg, len);
    while ((n = gwfw_frag_next(&it, frag, (size_t)mtu - GWFW_ATT_HEADER_SIZE)) > 0) {
        vec_print_hex(f, "fragment", frag, (size_t)n);
    }
    return n < 0 ? n : count;
}

void vec_print_entropy(FILE *f, double h_bits)
{
    fprintf(f, "entropy %.17g\n", h_bits);
}

void vec_print_policy(FILE *f, uint16_t tau_mbits, uint16_t min_conf_e4, uint16_t reason)
{
    fprintf(f, "policy %u %u %u\n", (unsigned)tau_mbits, (unsigned)min_conf_e4, (unsigned)reason);
}

int vec_print_control(FILE *f, const uint8_t *cmd, size_t len)
{
    struct gwfw_control c;
    const int rc = gwfw_decode_control(cmd, len, &c);

    fputs("control ", f);
    print_hex(f, cmd, len);
    fputs(rc == GWFW_OK ? " ok\n" : " reject\n", f);
    return rc;
}

uint16_t conf_of(const struct gwfw_summary *s)
{
    return gwfw_offload_confidence_e4(s->activity_conf_e4, s->signal_quality, s->hr_cbpm,
                                      s->activity, GWFW_REST_LIMIT_CBPM);
}
