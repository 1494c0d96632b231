/* error.c -- names of the error codes, for logs (no stdio here: the caller prints). */
#include "gwfw.h"

const char *gwfw_strerror(int err)
{
    switch (err) {
    case GWFW_OK: return "ok";
    case GWFW_E_NULL: return "null pointer";
    case GWFW_E_BUFFER: return "buffer too small";
    case GWFW_E_RANGE: return "field out of range";
    case GWFW_E_LENGTH: return "bad length";
    case GWFW_E_TOO_LONG: return "message too long";
    case GWFW_E_VERSION: return "unsupported version";
    case GWFW_E_TYPE: return "unknown message type";
    case GWFW_E_OPCODE: return "unknown opcode";
    case GWFW_E_CRC: return "bad crc";
    case GWFW_E_MTU: return "mtu out of range";
    case GWFW_E_FRAGMENTS: return "too many fragments";
    case GWFW_E_NOT_FOUND: return "not found";
    default: return "unknown error";
    }
}
