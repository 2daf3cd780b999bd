/* kernels/amx_emu.h - a C model of the AMX tile unit (palette 1), for testing the AMX
 * family (kernels/amx.h) on machines without it. Written from Intel's documented semantics
 * (Intel Architecture Instruction Set Extensions Programming Reference, "Intel AMX"):
 *
 *   LDTILECFG   a 64-byte record: palette (0: release, 1: 8 tiles of at most 16 rows x 64
 *               bytes), start_row (0), 14 reserved bytes (0), colsb[16] (u16), rows[16]
 *               (u8); tiles 8..15 must be unused; a tile is unused when both its rows and
 *               colsb are 0. Loading a configuration zeroes every tile.
 *   TILELOADD   rows r < tile.rows: tile.colsb bytes from base + r * stride; the rest of the
 *               tile (bytes past colsb, rows past rows) becomes 0.
 *   TILESTORED  rows r < tile.rows: tile.colsb bytes to base + r * stride.
 *   TILEZERO    the tile becomes 0.
 *   TDPBSUD     C[m][n] += sum_{k < A.colsb/4} sum_{i<4} s8(A[m][4k+i]) * u8(B[k][4n+i]), int32,
 *               wrapping (no saturation); C.rows = A.rows, C.colsb = B.colsb, A.colsb = 4 B.rows,
 *               three distinct tiles.
 *   TDPBF16PS   bf16 pairs, products exact in f32, sums rounded to nearest even, input
 *               denormals as zero, denormal results flushed to zero. The manual's pseudo-code
 *               adds the products to C one at a time (k in order, the even one of each pair
 *               first). The unit does not: on a Sapphire Rapids (this file's tests, 2026-12)
 *               it keeps, per instruction and output, two f32 sums - the even products
 *               (E = sum_k A[m][2k] B[k][2n], k in order) and the odd ones (O) - and then
 *               C += (E + O), each step rounded. Probed with values where the orders differ
 *               (2^24 + 1 + 1; 2^24 then 31 ones in one row; C = 2^24, E = 1, O = -1), and
 *               tests/test_kernels.c compares this model with the unit bit for bit on random
 *               tiles where one is present. This model computes what was measured.
 * Anything the hardware would fault on (#UD / #GP: an unconfigured or inconsistent tile, a
 * tile used twice in one instruction, a bad configuration) stops the program with a message:
 * in a test build a wrong shape is found, not computed around.
 *
 * The state is per thread (the unit's tiles are per-thread register state). */
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    int palette;
    int rows[8], colsb[8];
    uint8_t t[8][16][64];
} AmxEmu;
static _Thread_local AmxEmu amx_emu;

static void amx_emu_fault(const char *what, int tile) {
    fprintf(stderr, "amx emulator: %s (tile %d): the hardware would fault here\n", what, tile);
    abort();
}
static void amx_emu_loadconfig(const void *cfg) {
    const uint8_t *c = (const uint8_t *)cfg;
    memset(&amx_emu, 0, sizeof amx_emu);
    if (c[0] == 0) return; /* palette 0: the init state */
    if (c[0] != 1) amx_emu_fault("LDTILECFG: palette other than 1", -1);
    if (c[1] != 0) amx_emu_fault("LDTILECFG: start_row not 0", -1);
    for (int i = 2; i < 16; i++)
        if (c[i]) amx_emu_fault("LDTILECFG: reserved byte not 0", -1);
    for (int t = 0; t < 16; t++) {
        int colsb = c[16 + 2 * t] | c[17 + 2 * t] << 8, rows = c[48 + t];
        if (t >= 8 && (colsb || rows)) amx_emu_fault("LDTILECFG: palette 1 has 8 tiles", t);
        if (t >= 8) continue;
        if (rows > 16 || colsb > 64) amx_emu_fault("LDTILECFG: more than 16 rows or 64 bytes a row", t);
        if (!rows != !colsb) amx_emu_fault("LDTILECFG: rows and colsb must both be 0 or both be set", t);
        amx_emu.rows[t] = rows;
        amx_emu.colsb[t] = colsb;
    }
    amx_emu.palette = 1;
}
static void amx_emu_need(int t) {
    if (amx_emu.palette != 1) amx_emu_fault("tile instruction without a configuration", t);
    if (t < 0 || t > 7 || !amx_emu.rows[t]) amx_emu_fault("tile not configured", t);
}
static void amx_emu_loadd(int t, const void *base, size_t stride) {
    amx_emu_need(t);
    memset(amx_emu.t[t], 0, sizeof amx_emu.t[t]);
    for (int r = 0; r < amx_emu.rows[t]; r++) memcpy(amx_emu.t[t][r], (const uint8_t *)base + r * stride, (size_t)amx_emu.colsb[t]);
}
static void amx_emu_stored(int t, void *base, size_t stride) {
    amx_emu_need(t);
    for (int r = 0; r < amx_emu.rows[t]; r++) memcpy((uint8_t *)base + r * stride, amx_emu.t[t][r], (size_t)amx_emu.colsb[t]);
}
static void amx_emu_zero(int t) {
    amx_emu_need(t);
    memset(amx_emu.t[t], 0, sizeof amx_emu.t[t]);
}
static void amx_emu_release(void) { memset(&amx_emu, 0, sizeof amx_emu); }
/* the shape rules of the dot-product instructions */
static void amx_emu_dp_shapes(int c, int a, int b) {
    amx_emu_need(c), amx_emu_need(a), amx_emu_need(b);
    if (c == a || c == b || a == b) amx_emu_fault("dot product: the same tile twice", c);
    if (amx_emu.rows[c] != amx_emu.rows[a]) amx_emu_fault("dot product: C.rows != A.rows", c);
    if (amx_emu.colsb[c] != amx_emu.colsb[b]) amx_emu_fault("dot product: C.colsb != B.colsb", c);
    if (amx_emu.colsb[a] != 4 * amx_emu.rows[b]) amx_emu_fault("dot product: A.colsb != 4 B.rows", a);
    if (amx_emu.colsb[c] % 4 || amx_emu.colsb[a] % 4) amx_emu_fault("dot product: colsb not a multiple of 4", c);
}
static uint32_t amx_emu_u32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static void amx_emu_put32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24); }
static void amx_emu_dpbsud(int c, int a, int b) {
    amx_emu_dp_shapes(c, a, b);
    for (int m = 0; m < amx_emu.rows[c]; m++)
        for (int k = 0; k < amx_emu.colsb[a] / 4; k++)
            for (int n = 0; n < amx_emu.colsb[c] / 4; n++) {
                uint32_t acc = amx_emu_u32(amx_emu.t[c][m] + 4 * n); /* wrapping int32 */
                for (int i = 0; i < 4; i++)
                    acc += (uint32_t)((int32_t)(int8_t)amx_emu.t[a][m][4 * k + i] * (int32_t)amx_emu.t[b][k][4 * n + i]);
                amx_emu_put32(amx_emu.t[c][m] + 4 * n, acc);
            }
}
static float amx_emu_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t amx_emu_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
/* a bf16 as f32, denormals as (signed) zero */
static float amx_emu_bf16(const uint8_t *p) {
    uint32_t u = ((uint32_t)p[0] | (uint32_t)p[1] << 8) << 16;
    if ((u & 0x7f800000u) == 0) u &= 0x80000000u;
    return amx_emu_f32(u);
}
static float amx_emu_ftz(float f) {
    uint32_t u = amx_emu_bits(f);
    return (u & 0x7f800000u) == 0 ? amx_emu_f32(u & 0x80000000u) : f;
}
static void amx_emu_dpbf16ps(int c, int a, int b) {
    amx_emu_dp_shapes(c, a, b);
    for (int m = 0; m < amx_emu.rows[c]; m++)
            for (int n = 0; n < amx_emu.colsb[c] / 4; n++) {
                float e = 0.0f, o = 0.0f; /* the even and the odd products' sums */
                for (int k = 0; k < amx_emu.colsb[a] / 4; k++) {
                    e = amx_emu_ftz(e + amx_emu_ftz(amx_emu_bf16(amx_emu.t[a][m] + 4 * k) * amx_emu_bf16(amx_emu.t[b][k] + 4 * n)));
                    o = amx_emu_ftz(o + amx_emu_ftz(amx_emu_bf16(amx_emu.t[a][m] + 4 * k + 2) * amx_emu_bf16(amx_emu.t[b][k] + 4 * n + 2)));
                }
                float acc = amx_emu_f32(amx_emu_u32(amx_emu.t[c][m] + 4 * n));
                amx_emu_put32(amx_emu.t[c][m] + 4 * n, amx_emu_bits(amx_emu_ftz(acc + amx_emu_ftz(e + o))));
            }
}
