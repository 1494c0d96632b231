/*
 * message.c -- SUMMARY and WINDOW encoders (docs/protocol.md section 2).
 *
 * Every range the gateway's decoder checks is checked here first, so a message that leaves this
 * code is one the gateway accepts. Validation happens before the first byte is written.
 */
#include "gwfw.h"
#include "wire.h"

/* The summary fields' ranges (section 2.2) and the reserved flag bits (section 2.1): bits 8-15
 * are motion_cg (any value) with MOTION_REPORTED, and reserved without it. */
static int check_summary(const struct gwfw_summary *s)
{
    if ((s->flags & GWFW_FLAG_MOTION_REPORTED) == 0u &&
        (s->flags & (uint16_t)~GWFW_FLAG_DEFINED_MASK) != 0u) {
        return GWFW_E_RANGE; /* "senders set 0" */
    }
    if (s->activity > GWFW_ACTIVITY_MAX && s->activity != GWFW_UNKNOWN) {
        return GWFW_E_RANGE;
    }
    if (s->pruning_pct > GWFW_PCT_MAX || s->activity_conf_e4 > GWFW_CONF_E4_MAX ||
        s->entropy_mbits > GWFW_ENTROPY_MBITS_MAX || s->hr_cbpm > GWFW_HR_CBPM_MAX) {
        return GWFW_E_RANGE;
    }
    if (s->signal_quality > GWFW_PCT_MAX && s->signal_quality != GWFW_UNKNOWN) {
        return GWFW_E_RANGE;
    }
    if (s->battery_pct > GWFW_PCT_MAX && s->battery_pct != GWFW_UNKNOWN) {
        return GWFW_E_RANGE;
    }
    if (s->window_ms == 0u || s->window_ms > GWFW_WINDOW_MS_MAX) {
        return GWFW_E_RANGE;
    }
    return GWFW_OK;
}

/* Header (16 bytes) and summary body (12 bytes) at out[0..28). */
static void write_summary(const struct gwfw_summary *s, uint8_t type, uint8_t *out)
{
    out[0] = (uint8_t)GWFW_PROTOCOL_VERSION;
    out[1] = type;
    gwfw_put_u16(out + 2, s->flags);
    gwfw_put_u32(out + 4, s->seq);
    gwfw_put_u64(out + 8, s->t_ms);
    out[16] = s->activity;
    out[17] = s->pruning_pct;
    gwfw_put_u16(out + 18, s->activity_conf_e4);
    gwfw_put_u16(out + 20, s->entropy_mbits);
    gwfw_put_u16(out + 22, s->hr_cbpm);
    out[24] = s->signal_quality;
    out[25] = s->battery_pct;
    gwfw_put_u16(out + 26, s->window_ms);
}

static void write_crc(uint8_t *msg, size_t body_len)
{
    gwfw_put_u32(msg + body_len, gwfw_crc32(msg, body_len));
}

int gwfw_encode_summary(const struct gwfw_summary *s, uint8_t *out, size_t cap)
{
    int rc;

    if (s == NULL || out == NULL) {
        return GWFW_E_NULL;
    }
    rc = check_summary(s);
    if (rc != GWFW_OK) {
        return rc;
    }
    if (cap < GWFW_SUMMARY_SIZE) {
        return GWFW_E_BUFFER;
    }
    write_summary(s, (uint8_t)GWFW_TYPE_SUMMARY, out);
    write_crc(out, GWFW_SUMMARY_BODY_END);
    return (int)GWFW_SUMMARY_SIZE;
}

long gwfw_window_message_size(uint8_t sample_format, uint16_t n_bvp, uint16_t n_acc)
{
    long s;

    if (sample_format == GWFW_SAMPLE_INT16) {
        s = 2;
    } else if (sample_format == GWFW_SAMPLE_INT8) {
        s = 1;
    } else {
        return GWFW_E_RANGE;
    }
    return (long)GWFW_WINDOW_BLOCK_END + ((long)n_bvp + 3L * (long)n_acc) * s +
           (long)GWFW_CRC_SIZE;
}

/* For int8 on the wire, every sample must fit -128..127: narrowing silently would corrupt. */
static int check_int8(const int16_t *v, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (v[i] < -128 || v[i] > 127) {
            return GWFW_E_RANGE;
        }
    }
    return GWFW_OK;
}

/* Write n samples at p in the wire format; returns the byte after the last one. */
static uint8_t *write_samples(uint8_t *p, const int16_t *v, size_t n, uint8_t sample_format)
{
    size_t i;

    if (sample_format == GWFW_SAMPLE_INT16) {
        for (i = 0; i < n; i++) {
            gwfw_put_u16(p, gwfw_i16_bits(v[i]));
            p += 2;
        }
    } else {
        for (i = 0; i < n; i++) {
            /* two's complement byte of a value already checked to fit int8 */
            *p++ = (uint8_t)((int32_t)v[i] & 0xFF);
        }
    }
    return p;
}

int gwfw_encode_window(const struct gwfw_summary *s, const struct gwfw_window *w, uint8_t *out,
                       size_t cap)
{
    long size;
    int rc;
    uint8_t *p;

    if (s == NULL || w == NULL || out == NULL) {
        return GWFW_E_NULL;
    }
    rc = check_summary(s);
    if (rc != GWFW_OK) {
        return rc;
    }
    /* a WINDOW is only ever sent because the policy said so (section 2.1) */
    if ((s->flags & GWFW_FLAG_OFFLOAD_MASK) == 0u) {
        return GWFW_E_RANGE;
    }
    if (w->bvp_rate_hz == 0u || w->acc_rate_hz == 0u || w->acc_lsb_per_g == 0u) {
        return GWFW_E_RANGE;
    }
    size = gwfw_window_message_size(w->sample_format, w->n_bvp, w->n_acc);
    if (size < 0) {
        return (int)size;
    }
    /* counts must match rates and the window (section 2.3); products fit in 32 bits */
    if ((uint32_t)w->n_bvp * 1000u != (uint32_t)w->bvp_rate_hz * (uint32_t)s->window_ms ||
        (uint32_t)w->n_acc * 1000u != (uint32_t)w->acc_rate_hz * (uint32_t)s->window_ms) {
        return GWFW_E_LENGTH;
    }
    if (size > (long)GWFW_MAX_MESSAGE) {
        return GWFW_E_TOO_LONG;
    }
    if (w->bvp == NULL || (w->n_acc > 0u && w->acc_xyz == NULL)) {
        return GWFW_E_NULL;
    }
    if (w->sample_format == GWFW_SAMPLE_INT8) {
        if (check_int8(w->bvp, w->n_bvp) != GWFW_OK ||
            check_int8(w->acc_xyz, 3u * (size_t)w->n_acc) != GWFW_OK) {
            return GWFW_E_RANGE;
        }
    }
    if (cap < (size_t)size) {
        return GWFW_E_BUFFER;
    }

    write_summary(s, (uint8_t)GWFW_TYPE_WINDOW, out);
    out[28] = w->sample_format;
    out[29] = w->bvp_rate_hz;
    out[30] = w->acc_rate_hz;
    out[31] = 0u; /* reserved */
    gwfw_put_u16(out + 32, w->n_bvp);
    gwfw_put_u16(out + 34, w->n_acc);
    gwfw_put_u16(out + 36, w->acc_lsb_per_g);
    gwfw_put_u16(out + 38, 0u); /* reserved */
    p = write_samples(out + GWFW_WINDOW_BLOCK_END, w->bvp, w->n_bvp, w->sample_format);
    p = write_samples(p, w->acc_xyz, 3u * (size_t)w->n_acc, w->sample_format);
    write_crc(out, (size_t)(p - out));
    return (int)size;
}

int gwfw_mark_resent(uint8_t *msg, size_t len)
{
    uint16_t flags;

    if (msg == NULL) {
        return GWFW_E_NULL;
    }
    if (len < GWFW_MIN_MESSAGE) {
        return GWFW_E_LENGTH;
    }
    if (len > GWFW_MAX_MESSAGE) {
        return GWFW_E_TOO_LONG;
    }
    if (msg[0] != GWFW_PROTOCOL_VERSION) {
        return GWFW_E_VERSION;
    }
    if (msg[1] != GWFW_TYPE_SUMMARY && msg[1] != GWFW_TYPE_WINDOW) {
        return GWFW_E_TYPE;
    }
    if (gwfw_get_u32(msg + len - GWFW_CRC_SIZE) != gwfw_crc32(msg, len - GWFW_CRC_SIZE)) {
        return GWFW_E_CRC;
    }
    flags = (uint16_t)(gwfw_get_u16(msg + 2) | GWFW_FLAG_RESENT);
    gwfw_put_u16(msg + 2, flags);
    write_crc(msg, len - GWFW_CRC_SIZE);
    return GWFW_OK;
}
