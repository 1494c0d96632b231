/*
 * wire.h -- private helpers of the library: little-endian byte writes and reads.
 *
 * Explicit shifts, never struct casts or memcpy of integers: correct on any endianness, any
 * alignment and with any struct padding.
 */
#ifndef GWFW_WIRE_H
#define GWFW_WIRE_H

#include <stdint.h>

static inline void gwfw_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
}

static inline void gwfw_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)((v >> 24) & 0xFFu);
}

static inline void gwfw_put_u64(uint8_t *p, uint64_t v)
{
    gwfw_put_u32(p, (uint32_t)(v & 0xFFFFFFFFu));
    gwfw_put_u32(p + 4, (uint32_t)(v >> 32));
}

static inline uint16_t gwfw_get_u16(const uint8_t *p)
{
    return (uint16_t)((uint16_t)p[0] | (uint16_t)((uint16_t)p[1] << 8));
}

static inline uint32_t gwfw_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline uint64_t gwfw_get_u64(const uint8_t *p)
{
    return (uint64_t)gwfw_get_u32(p) | ((uint64_t)gwfw_get_u32(p + 4) << 32);
}

/* Two's complement of an int16 as the u16 that goes on the wire (well defined in C99). */
static inline uint16_t gwfw_i16_bits(int16_t v)
{
    return (uint16_t)((int32_t)v & 0xFFFF);
}

#endif /* GWFW_WIRE_H */
