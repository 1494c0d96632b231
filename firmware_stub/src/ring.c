/*
 * ring.c -- the wearable's recent messages, kept to answer RESEND (docs/protocol.md section 4).
 *
 * Messages are copied back to back into the caller's arena, in arrival order, each in one piece
 * (when one does not fit before the end of the arena, writing wraps to offset 0 and the tail is
 * left unused). Because writing only ever advances, the bytes just after `head` always belong to
 * the oldest messages: making room is "evict the oldest while it overlaps the space claimed".
 * A slot table (GWFW_RING_SLOTS entries, itself a FIFO) maps seq -> (offset, length).
 */
#include <string.h>

#include "gwfw.h"

int gwfw_ring_init(struct gwfw_ring *r, uint8_t *arena, size_t arena_size)
{
    if (r == NULL || arena == NULL) {
        return GWFW_E_NULL;
    }
    if (arena_size == 0u) {
        return GWFW_E_BUFFER;
    }
    memset(r, 0, sizeof *r);
    r->arena = arena;
    r->arena_size = arena_size;
    return GWFW_OK;
}

static int overlaps(size_t a0, size_t a1, size_t b0, size_t b1)
{
    return a0 < b1 && b0 < a1;
}

static void evict_oldest(struct gwfw_ring *r)
{
    r->first = (uint16_t)((r->first + 1u) % GWFW_RING_SLOTS);
    r->count--;
    r->evicted++;
}

int gwfw_ring_put(struct gwfw_ring *r, uint32_t seq, const uint8_t *msg, size_t len)
{
    size_t start;
    int wrap;
    struct gwfw_ring_slot *slot;

    if (r == NULL || msg == NULL || r->arena == NULL) {
        return GWFW_E_NULL;
    }
    if (len == 0u) {
        return GWFW_E_LENGTH;
    }
    if (len > GWFW_MAX_MESSAGE) {
        return GWFW_E_TOO_LONG;
    }
    if (len > r->arena_size) {
        return GWFW_E_BUFFER;
    }
    if (r->count == 0u) {
        r->head = 0u;
    }
    wrap = len > r->arena_size - r->head;
    start = wrap ? 0u : r->head;

    /* Claimed space: [head, head + len), or on a wrap [head, arena_size) (given up) + [0, len). */
    while (r->count > 0u) {
        const struct gwfw_ring_slot *old = &r->slot[r->first];
        const size_t o0 = old->off;
        const size_t o1 = old->off + old->len;
        int hit;

        if (wrap) {
            hit = overlaps(o0, o1, r->head, r->arena_size) || overlaps(o0, o1, 0u, len);
        } else {
            hit = overlaps(o0, o1, r->head, r->head + len);
        }
        if (!hit) {
            break;
        }
        evict_oldest(r);
    }
    if (r->count == GWFW_RING_SLOTS) {
        evict_oldest(r);
    }

    slot = &r->slot[(r->first + r->count) % GWFW_RING_SLOTS];
    slot->seq = seq;
    slot->off = start;
    slot->len = (uint16_t)len;
    memcpy(r->arena + start, msg, len);
    r->count++;
    r->head = start + len;
    return GWFW_OK;
}

int gwfw_ring_get(struct gwfw_ring *r, uint32_t seq, uint8_t **msg, size_t *len)
{
    uint16_t i;

    if (r == NULL || msg == NULL || len == NULL) {
        return GWFW_E_NULL;
    }
    /* newest first, so a seq stored twice answers with its latest copy */
    for (i = r->count; i > 0u; i--) {
        const struct gwfw_ring_slot *s = &r->slot[(r->first + i - 1u) % GWFW_RING_SLOTS];
        if (s->seq == seq) {
            *msg = r->arena + s->off;
            *len = s->len;
            return GWFW_OK;
        }
    }
    *msg = NULL;
    *len = 0u;
    return GWFW_E_NOT_FOUND;
}

uint16_t gwfw_ring_count(const struct gwfw_ring *r)
{
    return r == NULL ? 0u : r->count;
}
