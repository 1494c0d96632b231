/*
 * synth.h -- host-only helpers shared by golden.c and demo.c: a deterministic PRNG, synthetic
 * wrist signals, and the golden-vector text format of docs/protocol.md section 8.
 */
#ifndef GWFW_SYNTH_H
#define GWFW_SYNTH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gwfw.h"

/* xorshift32 (Marsaglia 2003): tiny, deterministic on every platform. State must be non-zero. */
uint32_t synth_xorshift32(uint32_t *state);
/* A uniform integer in [-amp, amp]. */
int32_t synth_uniform(uint32_t *state, int32_t amp);

/* BVP-like pulse: round(a1*sin(2 pi 1.2 t) + a2*sin(2 pi 2.4 t) + noise), noise uniform in
 * [-noise_amp, noise_amp] (gaussian-like when gaussian != 0: the sum of four uniforms). */
void synth_bvp(int16_t *out, size_t n, double rate_hz, double a1, double a2, int32_t noise_amp,
               int gaussian, uint32_t *state);
/* Accelerometer at rest, wrist flat: (0, 0, lsb_per_g) plus uniform noise, interleaved xyz. */
void synth_acc(int16_t *xyz, size_t n, int16_t lsb_per_g, int32_t noise_amp, uint32_t *state);

/* The offload confidence of a summary: gwfw_offload_confidence_e4 of its four fields, with the
 * default resting limit. */
uint16_t conf_of(const struct gwfw_summary *s);

/* "<key> <lowercase hex>\n" */
void vec_print_hex(FILE *f, const char *key, const uint8_t *data, size_t len);
/* "vector", "mtu", "message" and one "fragment" line per fragment (cut by the library's
 * iterator). Returns the fragment count, or a negative gwfw error. */
int vec_print_message(FILE *f, const char *name, uint16_t mtu, const uint8_t *msg, size_t len);
/* "entropy %.17g" */
void vec_print_entropy(FILE *f, double h_bits);
/* "policy <tau_mbits> <min_conf_e4> <reason>" */
void vec_print_policy(FILE *f, uint16_t tau_mbits, uint16_t min_conf_e4, uint16_t reason);
/* "control <hex> ok|reject": the verdict of gwfw_decode_control. Returns its result. */
int vec_print_control(FILE *f, const uint8_t *cmd, size_t len);

#endif /* GWFW_SYNTH_H */
