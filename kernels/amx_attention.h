/* kernels/amx_attention.h - attention_bf16_unit (kernels.h: the ViT's non-causal attention
 * with bf16 products and f32 sums, attention_bf16's arithmetic) on the AMX unit: TDPBF16PS for q k^T and for p v, the
 * softmax in f32 between them. #included by kernels/amx.h (after its AMX_* tile macros), so
 * that the same code runs on the unit and, with QA_AMX_EMULATE, on the C model of it
 * (kernels/amx_emu.h) in tests/test_kernels.c.
 *
 * Arithmetic (attention_bf16_avx512's, with the softmax's division moved after p v, and
 * f32 sums in the unit's order):
 *   s[i][j] = sum_d bf16(scale q[i][d]) bf16(k[j][d])        (scale = hd^-0.5, f32 sums)
 *   e[i][j] = exp(s[i][j] - max_j s[i][j])                   (f32)
 *   o[i][d] = (sum_j bf16(e[i][j]) bf16(v[j][d])) / sum_j e[i][j]   (f32 sums)
 * (so the scores are read once after the maximum: exp, sum and bf16 pairs in one pass,
 * no normalised f32 row stored and read again). TDPBF16PS sums each instruction's even and
 * odd products apart (amx_emu.h), so a sum is not the AVX-512 kernel's bits;
 * tests/test_kernels.c bounds both against plain-C forms of their arithmetic.
 *
 * Blocking. A work item is one head and 16 query rows (one tile of rows). Its scores for
 * all Tk keys are made tile by tile (16 queries x 16 keys, K steps of 32 dimensions: the
 * block's queries stay in two tile registers) and stored to the thread's scratch rows
 * (16 x pad16(Tk) floats: 64 KB per thousand keys, in L2, never the T x T matrix), each
 * row's maximum taken as its 64-key blocks are stored (in L1); the softmax turns each row
 * into bf16 pairs of e in place; then p v runs over the keys 32 at a time
 * (one A tile of pairs) into hd/16 C tiles that stay in the unit until the end. Every tile
 * is 16 rows x 64 bytes, so one configuration serves both phases:
 *   T0, T1  the queries' two K steps (phase 1); the probabilities, 32 keys (phase 2)
 *   T2, T3  keys (B: 16 dimension pairs x 16 keys)       | values (B: 16 key pairs x 16 dims)
 *   T4..T7  scores, four 16-key blocks in flight         | the output, 16 dims each
 * The operands' layouts (in kt, made once per call, zero-padded):
 *   kp[kh][e][j]  (k[j][2e], k[j][2e+1])   e < hp (hd/2 rounded up to 16), j < pad16(Tk)
 *   vp[kh][i][d]  (v[2i][d], v[2i+1][d])    i < pad32(Tk)/2, d < hd
 * and each block's queries in qt[16][hp] on the stack.
 * Shapes: hd a multiple of 16 up to 64 (the ViTs: 64), scratch rows >= 16 (kernels.h
 * ATT_SCRATCH_ROWS); anything else goes to the AVX-512 kernel (or, on the model of the
 * unit, is declined).
 * Each thread configures the tiles once per call and releases them at its end (so the
 * matmul tiles' own configuration, loaded per call, never meets a stale one). */

#define AMXA_ROWS 16
#define AMXA_TQ0 0
#define AMXA_TQ1 1

/* all eight tiles 16 rows x 64 bytes */
static void amx_att_configure(void) {
    AmxConfig c __attribute__((aligned(64)));
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) c.rows[t] = 16, c.colsb[t] = 64;
    AMX_CONFIG(&c);
}

/* One score row (Tk real keys of Tk16) -> its unnormalised probabilities e = exp(s - max) as
 * bf16 pairs in place (pair i, keys 2i and 2i+1, in 32-bit word i; words [ceil(Tk/2),
 * pad32(Tk)/2) zero) in one pass; returns 1 / sum e (the f32 e summed), by which the row's
 * output is scaled after p v. With AVX512-BF16 the row's maximum comes made (vmax: its
 * lanes' maxima, gathered while the scores were stored); the plain C form finds it itself. */
#ifdef QA_AVX512_BF16
static float amx_att_softmax_row(float *row, int Tk, __m512 vmax) {
    int n32 = (Tk + 31) / 32 * 32;
    __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax)), vsum = _mm512_setzero_ps();
    for (int c = 0; 32 * c < n32; c++) { /* reads floats 32c.., writes words 16c..: never ahead of the reads */
        int left = Tk - 32 * c;
        __mmask16 m0 = left > 0 ? tail_mask(left) : 0, m1 = left > 16 ? tail_mask(left - 16) : 0;
        __m512 lo = _mm512_maskz_mov_ps(m0, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m0, row + 32 * c), mx)));
        __m512 hi = _mm512_maskz_mov_ps(m1, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m1, row + 32 * c + 16), mx)));
        vsum = _mm512_add_ps(vsum, _mm512_add_ps(lo, hi));
        _mm512_storeu_si512(row + 16 * c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    return 1.0f / _mm512_reduce_add_ps(vsum);
}
#else
static float amx_att_softmax_row(float *row, int Tk) {
    int n32 = (Tk + 31) / 32 * 32;
    float mx = -INFINITY;
    double sum = 0.0; /* as softmax_ref: the sum in double */
    for (int j = 0; j < Tk; j++) mx = row[j] > mx ? row[j] : mx;
    uint32_t *w = (uint32_t *)row;
    for (int i = 0; i < n32 / 2; i++) { /* word i from floats 2i, 2i+1: read before written */
        float a = 2 * i < Tk ? expf(row[2 * i] - mx) : 0.0f, b = 2 * i + 1 < Tk ? expf(row[2 * i + 1] - mx) : 0.0f;
        sum += (double)a + (double)b;
        w[i] = (uint32_t)f32_to_bf16(a) | (uint32_t)f32_to_bf16(b) << 16;
    }
    return (float)(1.0 / sum);
}
#endif

#ifdef QA_AVX512_BF16
/* each row's running maximum (lanes) over the nb 16-key blocks from key j0 of the stored
 * scores: the real keys only, lanes past Tk keep the running value */
static inline void amx_att_rowmax(__m512 *rmax, const float *S, size_t Tk16, int Tk, int R, int j0, int nb) {
    for (int r = 0; r < R; r++) {
        const float *sr = S + (size_t)r * Tk16 + j0;
        __m512 m = rmax[r];
        for (int b = 0; b < nb && Tk - j0 - 16 * b > 0; b++)
            m = _mm512_max_ps(m, _mm512_mask_loadu_ps(m, tail_mask(Tk - j0 - 16 * b), sr + 16 * b));
        rmax[r] = m;
    }
}
#endif

/* the pair (bf16(a), bf16(b)) as one word */
static inline uint32_t amx_att_pair(float a, float b) { return (uint32_t)f32_to_bf16(a) | (uint32_t)f32_to_bf16(b) << 16; }

static int attention_bf16_amx(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int Tq, int Tk,
                              int H, int KVH, int hd, float *scratch, size_t scratch_stride, float *kt) {
    size_t Tk16 = pad16((size_t)Tk), Tk32 = ((size_t)Tk + 31) / 32 * 32;
    int hp = (hd / 2 + 15) / 16 * 16, steps = hp / 16, HC = hd / 16;
    /* kp and vp in kt (2 KVH hd Tk16 floats); 16 score rows in scratch */
    size_t need = (size_t)KVH * hp * Tk16 + (size_t)KVH * (Tk32 / 2) * hd;
    if (hd % 16 || hd > 64 || need > 2 * (size_t)KVH * hd * Tk16 || scratch_stride < AMXA_ROWS * Tk16) {
#ifdef QA_AVX512_BF16
        return attention_bf16_avx512(out, q, ldq, k, v, ldkv, Tq, Tk, H, KVH, hd, scratch, scratch_stride, kt);
#else
        return 0;
#endif
    }
    uint32_t *kp = (uint32_t *)kt, *vp = kp + (size_t)KVH * hp * Tk16;
    float scale = 1.0f / sqrtf((float)hd);
    int npairs = (int)(Tk32 / 2);
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int jb = 0; jb < (int)Tk16 / 16; jb++) /* 16 keys at a time: whole lines of kp */
            for (int kh = 0; kh < KVH; kh++)
                for (int e = 0; e < hp; e++) {
                    uint32_t *line = kp + ((size_t)kh * hp + e) * Tk16 + 16 * (size_t)jb;
                    for (int jj = 0; jj < 16; jj++) {
                        int j = 16 * jb + jj;
                        const float *kr = k + (size_t)j * ldkv + (size_t)kh * hd + 2 * e;
                        line[jj] = j < Tk && 2 * e < hd ? amx_att_pair(kr[0], kr[1]) : 0u;
                    }
                }
#pragma omp for schedule(static)
        for (int i = 0; i < npairs; i++)
            for (int kh = 0; kh < KVH; kh++) {
                const float *v0 = v + (size_t)(2 * i) * ldkv + (size_t)kh * hd, *v1 = v0 + ldkv;
                uint32_t *row = vp + ((size_t)kh * npairs + i) * hd;
                for (int d = 0; d < hd; d++) row[d] = amx_att_pair(2 * i < Tk ? v0[d] : 0.0f, 2 * i + 1 < Tk ? v1[d] : 0.0f);
            }
    }
    int group = H / KVH, blocks = (Tq + AMXA_ROWS - 1) / AMXA_ROWS;
#pragma omp parallel
    {
        amx_att_configure();
        float *S = scratch + (size_t)kernel_thread_id() * scratch_stride;
        uint32_t qt[AMXA_ROWS * 32] __attribute__((aligned(64)));
        float ob[AMXA_ROWS * 64] __attribute__((aligned(64)));
#pragma omp for collapse(2) schedule(dynamic, 2) /* a shared machine: no thread waits for a descheduled one */
        for (int h = 0; h < H; h++)
            for (int ib = 0; ib < blocks; ib++) {
                int i0 = ib * AMXA_ROWS, R = Tq - i0 < AMXA_ROWS ? Tq - i0 : AMXA_ROWS, kh = h / group;
                /* the block's queries, scaled, as pairs qt[r][e] (rows past R, pairs past hd/2 zero) */
                for (int r = 0; r < AMXA_ROWS; r++) {
                    const float *qr = q + (size_t)(i0 + r) * ldq + (size_t)h * hd;
                    int e = 0;
#ifdef QA_AVX512_BF16
                    if (r < R) bf16_pairs512(qt + r * hp, qr, hd, scale), e = hd / 2;
#endif
                    for (; e < hp; e++) qt[r * hp + e] = r < R && 2 * e < hd ? amx_att_pair(qr[2 * e] * scale, qr[2 * e + 1] * scale) : 0u;
                }
                AMX_LOAD(AMXA_TQ0, qt, (size_t)hp * 4);
                if (steps > 1) AMX_LOAD(AMXA_TQ1, qt + 16, (size_t)hp * 4);
                /* scores, 16 keys a tile, up to four tiles in flight (T4..T7; B alternates T2, T3) */
                const uint32_t *kph = kp + (size_t)kh * hp * Tk16;
#define AMXA_QK(tc, tb, tq, step, jj)                                                                        \
    do {                                                                                                     \
        AMX_LOAD(tb, kph + (size_t)(step) * 16 * Tk16 + j0 + 16 * (jj), Tk16 * 4);                           \
        AMX_DP_BF16(tc, tq, tb);                                                                             \
    } while (0)
#ifdef QA_AVX512_BF16
                __m512 rmax[AMXA_ROWS]; /* each row's running maximum over its real keys (lanes) */
                for (int r = 0; r < AMXA_ROWS; r++) rmax[r] = _mm512_set1_ps(-INFINITY);
#endif
                for (size_t j0 = 0; j0 < Tk16; j0 += 64) {
                    int nb = (int)((Tk16 - j0) / 16 < 4 ? (Tk16 - j0) / 16 : 4);
                    AMX_TZERO(4);
                    if (nb > 1) AMX_TZERO(5);
                    if (nb > 2) AMX_TZERO(6);
                    if (nb > 3) AMX_TZERO(7);
                    AMXA_QK(4, 2, 0, 0, 0);
                    if (nb > 1) AMXA_QK(5, 3, 0, 0, 1);
                    if (nb > 2) AMXA_QK(6, 2, 0, 0, 2);
                    if (nb > 3) AMXA_QK(7, 3, 0, 0, 3);
                    if (steps > 1) {
                        AMXA_QK(4, 2, 1, 1, 0);
                        if (nb > 1) AMXA_QK(5, 3, 1, 1, 1);
                        if (nb > 2) AMXA_QK(6, 2, 1, 1, 2);
                        if (nb > 3) AMXA_QK(7, 3, 1, 1, 3);
                    }
                    AMX_STORED(4, S + j0, Tk16 * 4);
                    if (nb > 1) AMX_STORED(5, S + j0 + 16, Tk16 * 4);
                    if (nb > 2) AMX_STORED(6, S + j0 + 32, Tk16 * 4);
                    if (nb > 3) AMX_STORED(7, S + j0 + 48, Tk16 * 4);
#ifdef QA_AVX512_BF16
                    /* the rows' maxima over the previous 64 keys, still in L1 (not another pass
                     * over the rows; one group behind, so that the tile stores have landed) */
                    if (j0 > 0) amx_att_rowmax(rmax, S, Tk16, Tk, R, (int)j0 - 64, 4);
#endif
                }
#ifdef QA_AVX512_BF16
                {
                    size_t jl = (Tk16 - 1) / 64 * 64; /* the last group */
                    amx_att_rowmax(rmax, S, Tk16, Tk, R, (int)jl, (int)((Tk16 - jl) / 16));
                }
#endif
#undef AMXA_QK
                /* softmax per real row, its division deferred to the output (inv); the padding
                 * rows' words zero */
                float inv[AMXA_ROWS];
                for (int r = 0; r < AMXA_ROWS; r++) {
#ifdef QA_AVX512_BF16
                    if (r < R) inv[r] = amx_att_softmax_row(S + (size_t)r * Tk16, Tk, rmax[r]);
#else
                    if (r < R) inv[r] = amx_att_softmax_row(S + (size_t)r * Tk16, Tk);
#endif
                    else memset(S + (size_t)r * Tk16, 0, Tk32 / 2 * sizeof(float));
                }
                /* out = p v: 32 keys (16 pairs) a step, hd/16 output tiles */
                const uint32_t *vph = vp + (size_t)kh * npairs * hd;
                /* (tile numbers are part of the instruction: spelled out per output tile) */
#define AMXA_PV(c, tb, tc)                                                                                   \
    if (HC > c) {                                                                                        \
        AMX_LOAD(tb, vph + (size_t)p0 * hd + 16 * c, (size_t)hd * 4);                                    \
        AMX_DP_BF16(tc, AMXA_TQ0, tb);                                                                   \
    }
                AMX_TZERO(4);
                if (HC > 1) AMX_TZERO(5);
                if (HC > 2) AMX_TZERO(6);
                if (HC > 3) AMX_TZERO(7);
                for (int p0 = 0; p0 < npairs; p0 += 16) {
                    AMX_LOAD(AMXA_TQ0, S + p0, Tk16 * 4);
                    AMXA_PV(0, 2, 4)
                    AMXA_PV(1, 3, 5)
                    AMXA_PV(2, 2, 6)
                    AMXA_PV(3, 3, 7)
                }
#undef AMXA_PV
                float *o = out + (size_t)i0 * H * hd + (size_t)h * hd;
                AMX_STORED(4, ob, 64 * 4);
                if (HC > 1) AMX_STORED(5, ob + 16, 64 * 4);
                if (HC > 2) AMX_STORED(6, ob + 32, 64 * 4);
                if (HC > 3) AMX_STORED(7, ob + 48, 64 * 4);
                for (int r = 0; r < R; r++)
                    for (int d = 0; d < hd; d++) o[(size_t)r * H * hd + d] = ob[64 * r + d] * inv[r];
            }
        AMX_RELEASE();
    }
    return 1;
}
