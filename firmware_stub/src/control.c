/*
 * control.c -- the control characteristic (gateway -> wearable writes, docs/protocol.md 6.1)
 * and the info characteristic's value (6.2).
 */
#include <string.h>

#include "gwfw.h"
#include "wire.h"

/* Exact length of each opcode's command, 0 for an unknown opcode. */
static size_t control_length(uint8_t opcode)
{
    switch (opcode) {
    case GWFW_OP_TIME_SYNC: return GWFW_CONTROL_LEN_TIME_SYNC;
    case GWFW_OP_SET_POLICY: return GWFW_CONTROL_LEN_SET_POLICY;
    case GWFW_OP_SET_PRUNING: return GWFW_CONTROL_LEN_SET_PRUNING;
    case GWFW_OP_RESEND: return GWFW_CONTROL_LEN_RESEND;
    case GWFW_OP_SET_REST_LIMIT: return GWFW_CONTROL_LEN_SET_REST_LIMIT;
    default: return 0u;
    }
}

/* The argument ranges, shared by the decoder and the encoder. */
static int check_control(const struct gwfw_control *c)
{
    switch (c->opcode) {
    case GWFW_OP_TIME_SYNC:
        return GWFW_OK;
    case GWFW_OP_SET_POLICY:
        return c->min_conf_e4 <= GWFW_CONF_E4_MAX ? GWFW_OK : GWFW_E_RANGE;
    case GWFW_OP_SET_PRUNING:
        return c->pruning_pct <= GWFW_PCT_MAX ? GWFW_OK : GWFW_E_RANGE;
    case GWFW_OP_RESEND:
        return c->count >= 1u && c->count <= GWFW_RESEND_MAX ? GWFW_OK : GWFW_E_RANGE;
    case GWFW_OP_SET_REST_LIMIT:
        return c->rest_limit_cbpm <= GWFW_HR_CBPM_MAX ? GWFW_OK : GWFW_E_RANGE;
    default:
        return GWFW_E_OPCODE;
    }
}

int gwfw_decode_control(const uint8_t *buf, size_t len, struct gwfw_control *out)
{
    struct gwfw_control c;
    int rc;

    if (buf == NULL || out == NULL) {
        return GWFW_E_NULL;
    }
    memset(out, 0, sizeof *out);
    memset(&c, 0, sizeof c);
    if (len < 2u) {
        return GWFW_E_LENGTH;
    }
    if (buf[0] != GWFW_PROTOCOL_VERSION) {
        return GWFW_E_VERSION;
    }
    c.opcode = buf[1];
    if (control_length(c.opcode) == 0u) {
        return GWFW_E_OPCODE;
    }
    if (len != control_length(c.opcode)) {
        return GWFW_E_LENGTH;
    }
    switch (c.opcode) {
    case GWFW_OP_TIME_SYNC:
        c.unix_ms = gwfw_get_u64(buf + 2);
        break;
    case GWFW_OP_SET_POLICY:
        c.tau_mbits = gwfw_get_u16(buf + 2);
        c.min_conf_e4 = gwfw_get_u16(buf + 4);
        break;
    case GWFW_OP_SET_PRUNING:
        c.pruning_pct = buf[2];
        break;
    case GWFW_OP_SET_REST_LIMIT:
        c.rest_limit_cbpm = gwfw_get_u16(buf + 2);
        break;
    default: /* GWFW_OP_RESEND */
        c.first_seq = gwfw_get_u32(buf + 2);
        c.count = gwfw_get_u16(buf + 6);
        break;
    }
    rc = check_control(&c);
    if (rc != GWFW_OK) {
        return rc;
    }
    *out = c;
    return GWFW_OK;
}

int gwfw_encode_control(const struct gwfw_control *c, uint8_t *out, size_t cap)
{
    size_t len;
    int rc;

    if (c == NULL || out == NULL) {
        return GWFW_E_NULL;
    }
    rc = check_control(c);
    if (rc != GWFW_OK) {
        return rc;
    }
    len = control_length(c->opcode);
    if (cap < len) {
        return GWFW_E_BUFFER;
    }
    out[0] = (uint8_t)GWFW_PROTOCOL_VERSION;
    out[1] = c->opcode;
    switch (c->opcode) {
    case GWFW_OP_TIME_SYNC:
        gwfw_put_u64(out + 2, c->unix_ms);
        break;
    case GWFW_OP_SET_POLICY:
        gwfw_put_u16(out + 2, c->tau_mbits);
        gwfw_put_u16(out + 4, c->min_conf_e4);
        break;
    case GWFW_OP_SET_PRUNING:
        out[2] = c->pruning_pct;
        break;
    case GWFW_OP_SET_REST_LIMIT:
        gwfw_put_u16(out + 2, c->rest_limit_cbpm);
        break;
    default: /* GWFW_OP_RESEND */
        gwfw_put_u32(out + 2, c->first_seq);
        gwfw_put_u16(out + 6, c->count);
        break;
    }
    return (int)len;
}

/* model_id characters: ASCII [A-Za-z0-9._-] (written out: no <ctype.h>, no locale). */
static int model_id_char_ok(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == '-';
}

int gwfw_encode_info(const struct gwfw_info *info, uint8_t *out, size_t cap)
{
    size_t len;
    uint8_t i;

    if (info == NULL || out == NULL || (info->model_id_len > 0u && info->model_id == NULL)) {
        return GWFW_E_NULL;
    }
    if (info->pruning_pct > GWFW_PCT_MAX || info->bvp_rate_hz == 0u ||
        info->acc_rate_hz == 0u || info->acc_lsb_per_g == 0u ||
        info->min_conf_e4 > GWFW_CONF_E4_MAX || info->model_id_len > GWFW_MODEL_ID_MAX) {
        return GWFW_E_RANGE;
    }
    if (info->sample_format != GWFW_SAMPLE_INT16 && info->sample_format != GWFW_SAMPLE_INT8) {
        return GWFW_E_RANGE;
    }
    for (i = 0; i < info->model_id_len; i++) {
        if (!model_id_char_ok(info->model_id[i])) {
            return GWFW_E_RANGE;
        }
    }
    len = GWFW_INFO_FIXED_SIZE + info->model_id_len;
    if (cap < len) {
        return GWFW_E_BUFFER;
    }
    out[0] = (uint8_t)GWFW_PROTOCOL_VERSION;
    out[1] = info->fw_major;
    out[2] = info->fw_minor;
    out[3] = info->fw_patch;
    gwfw_put_u32(out + 4, info->boot_id);
    out[8] = info->pruning_pct;
    out[9] = info->bvp_rate_hz;
    out[10] = info->acc_rate_hz;
    out[11] = info->sample_format;
    gwfw_put_u16(out + 12, info->acc_lsb_per_g);
    gwfw_put_u16(out + 14, info->tau_mbits);
    gwfw_put_u16(out + 16, info->min_conf_e4);
    gwfw_put_u32(out + 18, info->next_seq);
    out[22] = info->model_id_len;
    for (i = 0; i < info->model_id_len; i++) {
        out[GWFW_INFO_FIXED_SIZE + i] = (uint8_t)info->model_id[i];
    }
    return (int)len;
}
