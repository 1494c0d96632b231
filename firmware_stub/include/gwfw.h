/*
 * gwfw.h -- the wearable side of the gatewayd wire protocol, version 1 (docs/protocol.md).
 *
 * Portable C99. The library (src/) uses only <stdint.h>, <stddef.h>, <string.h> and <math.h>:
 * no stdio, no malloc, no OS calls. Every output goes into a buffer the caller provides, and
 * every function that can fail returns a negative enum gwfw_error (0 or a length on success).
 * Integers on the wire are little-endian, written byte by byte (never by struct casts), so the
 * code is independent of the CPU's endianness and of struct padding.
 *
 * The encoders validate every field with the same ranges the gateway's decoder checks
 * (docs/protocol.md section 2.5), so this code cannot emit a message the gateway rejects.
 */
#ifndef GWFW_H
#define GWFW_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- versions ------------------------------------------------------------------------------ */

#define GWFW_PROTOCOL_VERSION 1u
#define GWFW_FW_VERSION_MAJOR 0u
#define GWFW_FW_VERSION_MINOR 1u
#define GWFW_FW_VERSION_PATCH 0u

/* ---- sizes and limits (docs/protocol.md sections 2-3, 6) ----------------------------------- */

#define GWFW_TYPE_SUMMARY 1u
#define GWFW_TYPE_WINDOW 2u

#define GWFW_HEADER_SIZE 16u        /* version, type, flags, seq, t_ms */
#define GWFW_SUMMARY_BODY_END 28u   /* header + 12-byte summary body */
#define GWFW_WINDOW_BLOCK_END 40u   /* ... + 12-byte window block, then the samples */
#define GWFW_CRC_SIZE 4u
#define GWFW_SUMMARY_SIZE 32u       /* a whole SUMMARY message, CRC included */
#define GWFW_MIN_MESSAGE GWFW_SUMMARY_SIZE
#define GWFW_MAX_MESSAGE 4080u      /* 255 fragments of 16 bytes: any message fits any MTU */

#define GWFW_MTU_MIN 23u
#define GWFW_MTU_MAX 517u
#define GWFW_ATT_HEADER_SIZE 3u     /* ATT opcode + handle: an ATT payload is MTU - 3 */
#define GWFW_FRAG_HEADER_SIZE 4u    /* u16 tag, u8 index, u8 count */
#define GWFW_MAX_FRAGMENTS 255u
#define GWFW_MAX_FRAGMENT (GWFW_MTU_MAX - GWFW_ATT_HEADER_SIZE) /* 514: largest notification */

/* ---- flags (header offset 2) ----------------------------------------------------------------- */

#define GWFW_FLAG_OFFLOAD_ENTROPY 0x0001u
#define GWFW_FLAG_OFFLOAD_CONFIDENCE 0x0002u
#define GWFW_FLAG_CLOCK_SYNCED 0x0004u
#define GWFW_FLAG_RESENT 0x0008u
#define GWFW_FLAG_CHARGING 0x0010u
#define GWFW_FLAG_OFF_WRIST 0x0020u
#define GWFW_FLAG_OFFLOAD_MOTION 0x0040u /* a fall candidate, or within the hold time after one */
#define GWFW_FLAG_MOTION_REPORTED 0x0080u /* bits 8-15 carry motion_cg (gwfw_motion_flags) */
#define GWFW_FLAG_OFFLOAD_MASK 0x0043u
/* Bits 0-7 are defined. Bits 8-15 are motion_cg when MOTION_REPORTED (bit 7) is set, and
 * reserved otherwise: the encoders refuse any of them set while bit 7 is clear. */
#define GWFW_FLAG_DEFINED_MASK 0x00FFu
#define GWFW_FLAG_MOTION_CG_MASK 0xFF00u

/* motion_cg, how hard the wrist moved over the window in 1/100 g (gwfw_motion_cg), is the high
 * byte of flags: flags = ... | GWFW_FLAG_MOTION_REPORTED | motion_cg << GWFW_MOTION_SHIFT.
 * An in-place addition to version 1: an older sender leaves bit 7 clear (motion unknown). */
#define GWFW_MOTION_SHIFT 8
#define GWFW_MOTION_CG_MAX 255u /* 2.55 g RMS and above */

/* ---- field ranges ------------------------------------------------------------------------------ */

#define GWFW_ACTIVITY_MAX 2u            /* activity groups: 0 rest, 1 light, 2 vigorous */
#define GWFW_ACTIVITY_REST 0u
/* The resting limit of gwfw_offload_confidence_e4 at boot, 1/100 bpm: 100 bpm, the gateway's
 * default tachycardia limit at rest. The gateway sends its own with SET_REST_LIMIT. */
#define GWFW_REST_LIMIT_CBPM 10000u
#define GWFW_UNKNOWN 255u               /* activity, signal_quality, battery_pct: unknown */
#define GWFW_PCT_MAX 100u
#define GWFW_CONF_E4_MAX 10000u
#define GWFW_HR_CBPM_MAX 30000u
#define GWFW_WINDOW_MS_MAX 60000u
#define GWFW_ENTROPY_MBITS_MAX 5000u    /* H <= log2(32 bins) = 5 bits */

#define GWFW_SAMPLE_INT16 1u
#define GWFW_SAMPLE_INT8 2u

/* ---- entropy estimator (docs/signals.md) ------------------------------------------------------- */

#define GWFW_ENTROPY_BINS 32
#define GWFW_ENTROPY_RANGE_SIGMA 4 /* bins cover [-4 sigma, +4 sigma]; outliers go to edge bins */

/* ---- offload reasons: identical to the OFFLOAD flag bits -------------------------------------- */

#define GWFW_OFFLOAD_ENTROPY GWFW_FLAG_OFFLOAD_ENTROPY
#define GWFW_OFFLOAD_LOW_CONFIDENCE GWFW_FLAG_OFFLOAD_CONFIDENCE
#define GWFW_OFFLOAD_MOTION GWFW_FLAG_OFFLOAD_MOTION

/* Motion offload defaults, the gateway's fall rule (rules.fall): an impact is a sample with
 * |a| >= 3 g (impact_g); a window is a fall candidate when its newest impact is followed by 2 s
 * of settling (settle_s) and then at least 2 s of whole 1 s blocks (block_s), none of which moves
 * (spread >= 150 mg, moving_min_std_g). The candidate window and the windows starting up to 16 s
 * after its impact are offloaded (the rule needs 2 s settle + 10 s stillness of raw ACC). */
#define GWFW_IMPACT_THRESHOLD_MILLI_G 3000u
#define GWFW_FALL_SETTLE_MS 2000u
#define GWFW_FALL_STILL_MS 2000u
#define GWFW_FALL_BLOCK_MS 1000u
#define GWFW_FALL_MOVING_MILLI_G 150u
#define GWFW_MOTION_HOLD_MS 16000u

/* ---- control characteristic (gateway -> wearable, section 6.1) --------------------------------- */

#define GWFW_OP_TIME_SYNC 0x01u
#define GWFW_OP_SET_POLICY 0x02u
#define GWFW_OP_SET_PRUNING 0x03u
#define GWFW_OP_RESEND 0x04u
#define GWFW_OP_SET_REST_LIMIT 0x05u

#define GWFW_CONTROL_MAX 20u
#define GWFW_CONTROL_LEN_TIME_SYNC 10u
#define GWFW_CONTROL_LEN_SET_POLICY 6u
#define GWFW_CONTROL_LEN_SET_PRUNING 3u
#define GWFW_CONTROL_LEN_RESEND 8u
#define GWFW_CONTROL_LEN_SET_REST_LIMIT 4u
#define GWFW_RESEND_MAX 256u

/* ---- info characteristic (section 6.2) ---------------------------------------------------------- */

#define GWFW_INFO_FIXED_SIZE 23u
#define GWFW_MODEL_ID_MAX 32u
#define GWFW_INFO_MAX (GWFW_INFO_FIXED_SIZE + GWFW_MODEL_ID_MAX) /* 55 bytes */

/* ---- errors ----------------------------------------------------------------------------------- */

/* Every fallible function returns one of these (negative) or a non-negative result. The comment
 * names the gateway's DecodeError reason that the same defect would earn on the other side. */
enum gwfw_error {
    GWFW_OK = 0,
    GWFW_E_NULL = -1,      /* a required pointer is NULL */
    GWFW_E_BUFFER = -2,    /* the caller's output buffer (or ring arena) is too small */
    GWFW_E_RANGE = -3,     /* a field is out of range / reserved bits set      (bad_field)  */
    GWFW_E_LENGTH = -4,    /* a length or sample count is inconsistent          (bad_length) */
    GWFW_E_TOO_LONG = -5,  /* a message over GWFW_MAX_MESSAGE bytes             (too_long)   */
    GWFW_E_VERSION = -6,   /* protocol version is not 1                 (unsupported_version) */
    GWFW_E_TYPE = -7,      /* message type is not SUMMARY or WINDOW             (unknown_type) */
    GWFW_E_OPCODE = -8,    /* unknown control opcode */
    GWFW_E_CRC = -9,       /* the message's CRC-32 does not match               (bad_crc)    */
    GWFW_E_MTU = -10,      /* MTU outside 23..517 */
    GWFW_E_FRAGMENTS = -11,/* the message would need more than 255 fragments */
    GWFW_E_NOT_FOUND = -12 /* ring: no message with that seq is stored */
};

/* A short, static, English name of an error code ("range", "buffer", ...); "ok" for 0. */
const char *gwfw_strerror(int err);

/* ---- CRC-32/ISO-HDLC (section 2.4) ---------------------------------------------------------- */

/* CRC-32 of len bytes (zlib's crc32(0, data, len)); "123456789" -> 0xCBF43926. */
uint32_t gwfw_crc32(const uint8_t *data, size_t len);
/* Continue a CRC: gwfw_crc32_update(gwfw_crc32(a, n), b, m) == CRC of a||b (zlib semantics). */
uint32_t gwfw_crc32_update(uint32_t crc, const uint8_t *data, size_t len);

/* ---- messages (section 2) ------------------------------------------------------------------ */

/* The header and summary fields shared by SUMMARY and WINDOW messages. */
struct gwfw_summary {
    uint32_t seq;              /* per-device sequence number, +1 per message, wraps */
    uint64_t t_ms;             /* window start, ms since the Unix epoch (or since boot) */
    uint16_t flags;            /* GWFW_FLAG_*, and motion_cg in bits 8-15 when bit 7
                                  (GWFW_FLAG_MOTION_REPORTED) is set; else bits 8-15 must be 0 */
    uint8_t activity;          /* activity group 0..2 (rest, light, vigorous), or GWFW_UNKNOWN */
    uint8_t pruning_pct;       /* 0..100 */
    uint16_t activity_conf_e4; /* 0..10000 */
    uint16_t entropy_mbits;    /* 0..5000, see gwfw_entropy_mbits() */
    uint16_t hr_cbpm;          /* 0 (no estimate)..30000 */
    uint8_t signal_quality;    /* 0..100, or GWFW_UNKNOWN */
    uint8_t battery_pct;       /* 0..100, or GWFW_UNKNOWN */
    uint16_t window_ms;        /* 1..60000 */
};

/* The raw samples of a WINDOW message. The samples are int16 in memory whatever the wire format:
 * with GWFW_SAMPLE_INT8 the encoder narrows them and refuses any value outside -128..127. */
struct gwfw_window {
    uint8_t sample_format;   /* GWFW_SAMPLE_INT16 or GWFW_SAMPLE_INT8 */
    uint8_t bvp_rate_hz;     /* 1..255; n_bvp * 1000 == bvp_rate_hz * window_ms */
    uint8_t acc_rate_hz;     /* 1..255; n_acc * 1000 == acc_rate_hz * window_ms */
    uint16_t n_bvp;          /* BVP samples */
    uint16_t n_acc;          /* accelerometer samples per axis */
    uint16_t acc_lsb_per_g;  /* >= 1 */
    const int16_t *bvp;      /* n_bvp samples */
    const int16_t *acc_xyz;  /* n_acc triples x, y, z, interleaved (3 * n_acc values) */
};

/* Encode a SUMMARY message (always GWFW_SUMMARY_SIZE = 32 bytes) into out[0..cap).
 * Returns 32, or GWFW_E_NULL / GWFW_E_RANGE / GWFW_E_BUFFER. */
int gwfw_encode_summary(const struct gwfw_summary *s, uint8_t *out, size_t cap);

/* Size of a WINDOW message with these counts (CRC included), or GWFW_E_RANGE for a bad format. */
long gwfw_window_message_size(uint8_t sample_format, uint16_t n_bvp, uint16_t n_acc);

/* Encode a WINDOW message into out[0..cap). Besides the summary's ranges, a WINDOW must carry at
 * least one OFFLOAD flag (GWFW_E_RANGE), counts must match rates and window_ms (GWFW_E_LENGTH),
 * and the message must fit GWFW_MAX_MESSAGE (GWFW_E_TOO_LONG). Nothing is written on error.
 * Returns the message length (2604 for the default int16 8 s 64/32 Hz window). */
int gwfw_encode_window(const struct gwfw_summary *s, const struct gwfw_window *w, uint8_t *out,
                       size_t cap);

/* Mark a stored message as a retransmission (sets GWFW_FLAG_RESENT and rewrites the CRC), in
 * place, before answering RESEND. Checks length, version, type and CRC first. Returns 0. */
int gwfw_mark_resent(uint8_t *msg, size_t len);

/* ---- fragments (section 3) ----------------------------------------------------------------- */

/* Number of fragments a message of len bytes needs at this MTU: ceil(len / (mtu - 7)).
 * GWFW_E_MTU, GWFW_E_LENGTH (len 0), GWFW_E_FRAGMENTS (> 255), GWFW_E_TOO_LONG (> 4080). */
int gwfw_frag_count(size_t len, uint16_t mtu);

/* An iterator over the fragments of one message: the wearable needs only one buffer of
 * mtu - 3 bytes (one notification), not the whole fragmented message. */
struct gwfw_frag_iter {
    const uint8_t *msg; /* the message, borrowed: keep it alive and unchanged while iterating */
    uint16_t len;       /* message length */
    uint16_t chunk;     /* data bytes per fragment: mtu - 7 */
    uint16_t tag;       /* seq & 0xFFFF */
    uint8_t count;      /* fragments in all, 1..255 */
    uint16_t next;      /* index of the next fragment gwfw_frag_next() writes */
};

/* Start iterating. Returns the fragment count (1..255) or an error as gwfw_frag_count(). */
int gwfw_frag_init(struct gwfw_frag_iter *it, const uint8_t *msg, size_t len, uint32_t seq,
                   uint16_t mtu);
/* Write fragment number index (header + data) into out[0..cap); returns its length
 * (at most mtu - 3), GWFW_E_RANGE for an index >= count, GWFW_E_BUFFER if cap is too small. */
int gwfw_frag_write(const struct gwfw_frag_iter *it, uint8_t index, uint8_t *out, size_t cap);
/* Write the next fragment and advance; returns its length, 0 when all were written, or an error
 * (the iterator does not advance on error). To retry a notification the stack refused
 * (-ENOMEM), send the same buffer again, or call gwfw_frag_write() with it->next - 1. */
int gwfw_frag_next(struct gwfw_frag_iter *it, uint8_t *out, size_t cap);

/* ---- entropy and the offload policy (section 5, docs/signals.md) -------------------------- */

/* H(X) in bits of n BVP samples: exact integer sums, z-scores, 32 bins over [-4, +4] sigma,
 * log2. Bit-identical with gatewayd.signals.entropy when built with -ffp-contract=off and IEEE
 * double arithmetic. n < 2 or a constant signal gives 0.0. n is a u16 like n_bvp on the wire,
 * which also keeps n*Q - S*S inside int64. */
double gwfw_entropy_i16(const int16_t *x, uint16_t n);
/* The same estimator over int8 samples (identical to gwfw_entropy_i16 on the widened values). */
double gwfw_entropy_i8(const int8_t *x, uint16_t n);
/* The wire value: floor(h * 1000 + 0.5), clamped to 0..65535 (NaN -> 0). */
uint16_t gwfw_entropy_mbits(double h_bits);

/* The confidence the offload rule compares with min_conf_e4, from four summary fields: the
 * product of activity_conf_e4 (0..10000) and signal_quality / 100 (0..100), rounded half up
 * ((activity_conf_e4 * quality + 50) / 100), the quality counting only when the window has a
 * heart rate (hr_cbpm > 0) and a quality (not GWFW_UNKNOWN): a window without a pulse is not
 * offloaded for its heart rate. A quality above 100 counts as 100. 0 when activity is
 * GWFW_ACTIVITY_REST and hr_cbpm is above rest_limit_cbpm (unless that is 0, which turns the
 * check off): rest at a heart rate above the resting limit, GWFW_REST_LIMIT_CBPM by default.
 * Identical to gatewayd.signals.offload.offload_confidence_e4. */
uint16_t gwfw_offload_confidence_e4(uint16_t activity_conf_e4, uint8_t signal_quality,
                                    uint16_t hr_cbpm, uint8_t activity, uint16_t rest_limit_cbpm);

/* Why to offload: GWFW_OFFLOAD_ENTROPY if entropy_mbits > tau_mbits, GWFW_OFFLOAD_LOW_CONFIDENCE
 * if conf_e4 < min_conf_e4, where conf_e4 is gwfw_offload_confidence_e4() of the summary.
 * Offload iff non-zero. The bits are the OFFLOAD flags. */
uint16_t gwfw_offload_reason(uint16_t entropy_mbits, uint16_t conf_e4, uint16_t tau_mbits,
                             uint16_t min_conf_e4);

/* Index (0..n_acc-1) of the newest of n_acc interleaved x, y, z samples whose |a| in milli-g,
 * floor(1000 * sqrt(x*x + y*y + z*z) / acc_lsb_per_g), is at least threshold_milli_g, or -1 if
 * none (or a NULL pointer, or acc_lsb_per_g == 0). Decided on squares, exactly, without float:
 * 10^6 * (x*x + y*y + z*z) >= (threshold * lsb)^2. Identical to
 * gatewayd.signals.offload.last_impact_index. Pass the samples exactly as they go on the wire. */
int32_t gwfw_acc_last_impact(const int16_t *acc_xyz, uint16_t n_acc, uint16_t acc_lsb_per_g,
                             uint16_t threshold_milli_g);

/* The fall signature the wearable looks for (gatewayd.signals.offload.FallTrigger). */
struct gwfw_fall_params {
    uint16_t impact_milli_g; /* an impact: a sample with |a| >= this */
    uint16_t settle_ms;      /* not looked at after the impact (bounces, rolling) */
    uint16_t still_ms;       /* whole blocks covering at least this must follow the settling */
    uint16_t block_ms;       /* block length, >= 1 */
    uint16_t moving_milli_g; /* a block moves when sqrt(sum of per-axis variances) >= this */
};

/* The defaults above, for `struct gwfw_fall_params p = GWFW_FALL_PARAMS_DEFAULT;`. */
#define GWFW_FALL_PARAMS_DEFAULT                                                                  \
    {GWFW_IMPACT_THRESHOLD_MILLI_G, GWFW_FALL_SETTLE_MS, GWFW_FALL_STILL_MS, GWFW_FALL_BLOCK_MS, \
     GWFW_FALL_MOVING_MILLI_G}

/* Index of the impact that makes a window of n_acc interleaved samples at acc_rate_hz a fall
 * candidate, or -1 if it is not one (or bad arguments: NULL, lsb or rate 0, block_ms 0).
 * k = gwfw_acc_last_impact(...); with ceil(ms * rate / 1000) samples for a duration,
 * first = k + samples(settle_ms) and B = samples(block_ms), the whole blocks
 * [first + j*B, first + (j+1)*B) inside the window must number at least ceil(still_ms / block_ms)
 * and none may move: 10^6 * sum over axes (n*sum(x^2) - sum(x)^2) >= (n * moving * lsb)^2, with
 * n = B (exact integers, 128-bit products). Identical to fall_impact_index in Python. With the
 * defaults an impact at most 4 s into an 8 s window can qualify; windows every 2 s put every
 * impact there in some window. Its time is the window start plus k * 1000 / acc_rate_hz ms. */
int32_t gwfw_fall_impact(const int16_t *acc_xyz, uint16_t n_acc, uint8_t acc_rate_hz,
                         uint16_t acc_lsb_per_g, const struct gwfw_fall_params *p);

/* How hard the wrist moved over a window of n_acc interleaved x, y, z samples, in 1/100 g: the
 * RMS over the samples of the 3-axis deviation from the window's mean, sqrt of the summed
 * per-axis population variances (gravity is the mean, so a still wrist is 0 in any orientation),
 * rounded half up and saturated at GWFW_MOTION_CG_MAX (2.55 g). In exact integers, no floating
 * point: with V = sum over axes of (n * sum(x^2) - sum(x)^2) (n^2 times the variance, < 2^64)
 * and q = isqrt(10^4 * V) (floor, 128-bit), the value is (2q + n*L) / (2*n*L) with
 * L = acc_lsb_per_g, integer division, or 255 if larger. Returns 0 for n_acc == 0 and on bad
 * arguments (acc_xyz NULL with n_acc > 0, acc_lsb_per_g == 0). Identical to
 * gatewayd.signals.offload.motion_cg. Pass the samples exactly as they go on the wire. */
uint8_t gwfw_motion_cg(const int16_t *acc_xyz, uint16_t n_acc, uint16_t acc_lsb_per_g);

/* The flag bits that report motion_cg: GWFW_FLAG_MOTION_REPORTED | motion_cg << 8. OR them into
 * gwfw_summary.flags (identical to gatewayd.protocol.messages.motion_flags). */
uint16_t gwfw_motion_flags(uint8_t motion_cg);

/* GWFW_OFFLOAD_MOTION if have_fall != 0 and window_start_ms <= fall_impact_ms + hold_ms, else 0.
 * OR it into gwfw_offload_reason()'s result. fall_impact_ms is the caller's state: the time of
 * the impact of the newest fall candidate, updated from gwfw_fall_impact() on this window first
 * (a candidate window starts before its impact, so it is always offloaded); both times are on a
 * monotonic clock (uptime ms), not t_ms, which TIME_SYNC moves. */
uint16_t gwfw_offload_motion(uint64_t window_start_ms, int have_fall, uint64_t fall_impact_ms,
                             uint32_t hold_ms);

/* ---- control writes (section 6.1) ---------------------------------------------------------- */

/* A decoded control command. Only the fields of `opcode` are meaningful; the others are 0. */
struct gwfw_control {
    uint8_t opcode;        /* GWFW_OP_* */
    uint64_t unix_ms;      /* TIME_SYNC */
    uint16_t tau_mbits;    /* SET_POLICY */
    uint16_t min_conf_e4;  /* SET_POLICY, 0..10000 */
    uint8_t pruning_pct;   /* SET_PRUNING, 0..100 */
    uint32_t first_seq;    /* RESEND */
    uint16_t count;        /* RESEND, 1..256 */
    uint16_t rest_limit_cbpm; /* SET_REST_LIMIT, 0 (check off)..30000 */
};

/* Decode one control write. Checks, in order: length >= 2 (GWFW_E_LENGTH), version
 * (GWFW_E_VERSION), opcode (GWFW_E_OPCODE), the opcode's exact length (GWFW_E_LENGTH), argument
 * ranges (GWFW_E_RANGE). Returns 0 and fills *out, or an error (and *out is zeroed). Answer a
 * rejected write with an ATT error (e.g. BT_ATT_ERR_VALUE_NOT_ALLOWED). */
int gwfw_decode_control(const uint8_t *buf, size_t len, struct gwfw_control *out);
/* Encode a control command (the gateway's side; used by tests and the golden vectors).
 * Returns its length or GWFW_E_OPCODE / GWFW_E_RANGE / GWFW_E_BUFFER / GWFW_E_NULL. */
int gwfw_encode_control(const struct gwfw_control *c, uint8_t *out, size_t cap);

/* ---- info characteristic (section 6.2) ----------------------------------------------------- */

struct gwfw_info {
    uint8_t fw_major, fw_minor, fw_patch;
    uint32_t boot_id;        /* random at each boot: a new value resets the gateway's sequencing */
    uint8_t pruning_pct;     /* 0..100 */
    uint8_t bvp_rate_hz;     /* >= 1 */
    uint8_t acc_rate_hz;     /* >= 1 */
    uint8_t sample_format;   /* GWFW_SAMPLE_INT16 or GWFW_SAMPLE_INT8 */
    uint16_t acc_lsb_per_g;  /* >= 1 */
    uint16_t tau_mbits;      /* current policy */
    uint16_t min_conf_e4;    /* current policy, 0..10000 */
    uint32_t next_seq;       /* the seq the next message will get: tells a reconnecting gateway
                                what it missed at the end of the stream */
    const char *model_id;    /* model_id_len ASCII chars of [A-Za-z0-9._-], no NUL needed */
    uint8_t model_id_len;    /* 0..32 */
};

/* Encode the info characteristic's value (23 + model_id_len bytes). Returns its length or
 * GWFW_E_NULL / GWFW_E_RANGE / GWFW_E_BUFFER. */
int gwfw_encode_info(const struct gwfw_info *info, uint8_t *out, size_t cap);

/* ---- ring of recent messages, for RESEND (section 4) -------------------------------------- */

#ifndef GWFW_RING_SLOTS
#define GWFW_RING_SLOTS 64 /* the protocol asks for at least 64 recent messages */
#endif

struct gwfw_ring_slot {
    uint32_t seq;
    uint16_t len;
    size_t off;
};

/* Recent messages stored back to back in a caller-provided byte arena (a message is never split,
 * so gwfw_ring_get returns one pointer), at most GWFW_RING_SLOTS of them; the oldest are evicted
 * when either the slots or the arena run out. Size the arena for your mix: 64 SUMMARYs need
 * 2 KiB, 64 default WINDOWs 163 KiB. All state is in the struct: put it in static RAM. */
struct gwfw_ring {
    uint8_t *arena;
    size_t arena_size;
    size_t head;       /* where the next message goes (before any wrap to 0) */
    uint16_t first;    /* slot index of the oldest message */
    uint16_t count;    /* messages stored */
    uint32_t evicted;  /* messages dropped to make room (a counter for diagnostics) */
    struct gwfw_ring_slot slot[GWFW_RING_SLOTS];
};

/* Start an empty ring over arena[0..arena_size). GWFW_E_NULL, GWFW_E_BUFFER (arena_size 0). */
int gwfw_ring_init(struct gwfw_ring *r, uint8_t *arena, size_t arena_size);
/* Store a copy of msg (1..4080 bytes) under seq, evicting the oldest as needed. A seq stored
 * twice is found as its newest copy. GWFW_E_BUFFER if len exceeds the arena. Returns 0. */
int gwfw_ring_put(struct gwfw_ring *r, uint32_t seq, const uint8_t *msg, size_t len);
/* Find the newest message stored under seq: *msg points into the arena (valid until the next
 * put; writable, e.g. for gwfw_mark_resent), *len its length. 0 or GWFW_E_NOT_FOUND. */
int gwfw_ring_get(struct gwfw_ring *r, uint32_t seq, uint8_t **msg, size_t *len);
/* Number of messages stored. */
uint16_t gwfw_ring_count(const struct gwfw_ring *r);

#ifdef __cplusplus
}
#endif

#endif /* GWFW_H */
