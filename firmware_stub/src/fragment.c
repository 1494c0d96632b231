/*
 * fragment.c -- cutting a message into notifications (docs/protocol.md section 3).
 *
 * Fragment = u16 tag (seq & 0xFFFF), u8 index, u8 count, then 1..(MTU - 7) message bytes.
 * Every chunk but the last is exactly MTU - 7 bytes; the last carries the rest.
 */
#include <string.h>

#include "gwfw.h"
#include "wire.h"

int gwfw_frag_count(size_t len, uint16_t mtu)
{
    size_t chunk;
    size_t count;

    if (mtu < GWFW_MTU_MIN || mtu > GWFW_MTU_MAX) {
        return GWFW_E_MTU;
    }
    if (len == 0u) {
        return GWFW_E_LENGTH;
    }
    chunk = (size_t)mtu - GWFW_ATT_HEADER_SIZE - GWFW_FRAG_HEADER_SIZE;
    count = len / chunk + (len % chunk != 0u ? 1u : 0u);
    if (count > GWFW_MAX_FRAGMENTS) {
        return GWFW_E_FRAGMENTS;
    }
    /* the gateway's reassembler refuses more than 4080 bytes whatever the MTU */
    if (len > GWFW_MAX_MESSAGE) {
        return GWFW_E_TOO_LONG;
    }
    return (int)count;
}

int gwfw_frag_init(struct gwfw_frag_iter *it, const uint8_t *msg, size_t len, uint32_t seq,
                   uint16_t mtu)
{
    int count;

    if (it == NULL || msg == NULL) {
        return GWFW_E_NULL;
    }
    count = gwfw_frag_count(len, mtu);
    if (count < 0) {
        return count;
    }
    it->msg = msg;
    it->len = (uint16_t)len;
    it->chunk = (uint16_t)(mtu - GWFW_ATT_HEADER_SIZE - GWFW_FRAG_HEADER_SIZE);
    it->tag = (uint16_t)(seq & 0xFFFFu);
    it->count = (uint8_t)count;
    it->next = 0u;
    return count;
}

int gwfw_frag_write(const struct gwfw_frag_iter *it, uint8_t index, uint8_t *out, size_t cap)
{
    size_t off;
    size_t n;

    if (it == NULL || out == NULL || it->msg == NULL) {
        return GWFW_E_NULL;
    }
    if (index >= it->count) {
        return GWFW_E_RANGE;
    }
    off = (size_t)index * it->chunk;
    n = it->len - off < it->chunk ? it->len - off : it->chunk;
    if (cap < GWFW_FRAG_HEADER_SIZE + n) {
        return GWFW_E_BUFFER;
    }
    gwfw_put_u16(out, it->tag);
    out[2] = index;
    out[3] = it->count;
    memcpy(out + GWFW_FRAG_HEADER_SIZE, it->msg + off, n);
    return (int)(GWFW_FRAG_HEADER_SIZE + n);
}

int gwfw_frag_next(struct gwfw_frag_iter *it, uint8_t *out, size_t cap)
{
    int n;

    if (it == NULL) {
        return GWFW_E_NULL;
    }
    if (it->next >= it->count) {
        return 0;
    }
    n = gwfw_frag_write(it, (uint8_t)it->next, out, cap);
    if (n > 0) {
        it->next++;
    }
    return n;
}
