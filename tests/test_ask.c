/* test_ask.c - the generation API's edges that a random tiny model does not reach from the
 * command line (run by tests/test_ask.py: build/test_ask MODEL IMAGE):
 *   - the stop text: an answer asked again with a stop text taken from its own middle ends
 *     right before it (finish "stop"), its tokens a prefix of the first answer's;
 *   - streaming: the texts given to on_token, joined, are the answer before stripping, never
 *     split inside a UTF-8 character, and come once per token;
 *   - qalign_ask_batch: per-item errors (an empty question, max_tokens 0) are those items'
 *     only, the others are answered as alone; the K/V bytes per token; the library's errors.
 * White-box only in that it is built like the other test drivers (#include of qalign.c).
 */
#include "../qalign.c"
#include "../kernels.c"

static int n_pass, n_fail;

static void check(int ok, const char *what) {
    printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
    ok ? n_pass++ : n_fail++;
}

typedef struct {
    char text[8192];
    size_t len;
    int calls, split;
} Stream;

static void on_token(void *user, int seq, int id, const char *text) {
    Stream *st = user;
    (void)seq, (void)id;
    size_t n = strlen(text);
    if (n && ((unsigned char)text[0] & 0xC0) == 0x80) st->split = 1; /* starts inside a character */
    if (st->len + n < sizeof st->text) memcpy(st->text + st->len, text, n), st->len += n;
    st->text[st->len] = 0;
    st->calls++;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_ask MODEL IMAGE\n");
        return 2;
    }
    char err[QALIGN_ERR_LEN];
    qalign_model *m;
    qalign_ctx *c;
    Image img;
    if (qalign_open(argv[1], NULL, &m, err, sizeof err) || qalign_ctx_new(m, NULL, &c, err, sizeof err) ||
        image_load(argv[2], &img, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    qalign_image qi = {img.rgb, img.w, img.h};
    const char *q = "Describe the quality of this image.";

    /* streaming: the pieces joined are the answer */
    Stream st = {0};
    qalign_ask_options o = {.max_tokens = 24, .on_token = on_token, .user = &st, .stop = ""};
    qalign_answer a;
    int rc = qalign_ask_images(c, &qi, 1, q, &o, &a, err, sizeof err);
    check(rc == QALIGN_OK && a.status == QALIGN_OK && a.n_tokens == 24 && !strcmp(a.finish, "length"),
          "24 greedy tokens, finish length");
    char stripped[8192];
    snprintf(stripped, sizeof stripped, "%s", st.text);
    strip_blanks(stripped);
    check(!strcmp(stripped, a.text) && st.calls == 24 && !st.split,
          "on_token: one call per token, never inside a character, joined = the answer");

    /* the stop text: from the middle of that answer */
    size_t L = strlen(a.text), at = L / 2;
    while (at < L && ((unsigned char)a.text[at] & 0xC0) == 0x80) at++;
    size_t end = at + 1;
    while (end < L && ((unsigned char)a.text[end] & 0xC0) == 0x80) end++;
    char stop[16] = "";
    memcpy(stop, a.text + at, end - at < sizeof stop - 1 ? end - at : sizeof stop - 1);
    char *first = strstr(a.text, stop);
    Stream st2 = {0};
    qalign_ask_options o2 = {.max_tokens = 24, .on_token = on_token, .user = &st2, .stop = stop};
    qalign_answer b;
    rc = qalign_ask_images(c, &qi, 1, q, &o2, &b, err, sizeof err);
    char want[8192];
    snprintf(want, sizeof want, "%.*s", (int)(first - a.text), a.text);
    strip_blanks(want);
    int prefix = b.n_tokens <= a.n_tokens;
    for (int i = 0; prefix && i < b.n_tokens; i++) prefix = b.tokens[i] == a.tokens[i];
    check(rc == QALIGN_OK && b.status == QALIGN_OK && !strcmp(b.finish, "stop") && !strcmp(b.text, want) && prefix &&
              b.n_tokens < a.n_tokens && !strstr(st2.text, stop),
          "a stop text from the answer's middle: the answer ends before it, finish stop, nothing of it streamed");

    /* several questions at once, two of them bad */
    qalign_ask_options bad = {.max_tokens = 0}, ok4 = {.max_tokens = 4};
    qalign_ask_item items[4] = {{&qi, q, &ok4}, {&qi, "  ", &ok4}, {&qi, q, &bad}, {&qi, "Why?", &ok4}};
    qalign_answer out[4], why;
    rc = qalign_ask_batch(c, items, 4, out, err, sizeof err);
    qalign_ask_images(c, &qi, 1, "Why?", &ok4, &why, err, sizeof err);
    check(rc == QALIGN_OK && out[0].status == QALIGN_OK && out[3].status == QALIGN_OK && out[1].status == QALIGN_ERR_ARG &&
              strstr(out[1].error, "empty") && out[2].status == QALIGN_ERR_ARG && strstr(out[2].error, "max_tokens") &&
              out[0].n_tokens == 4 && !memcmp(out[0].tokens, a.tokens, 4 * sizeof(int)) && why.n_tokens == 4 &&
              !memcmp(out[3].tokens, why.tokens, 4 * sizeof(int)),
          "qalign_ask_batch: bad items get their own error, the others are their answers alone");
    for (int i = 0; i < 4; i++) qalign_answer_free(&out[i]);
    qalign_answer_free(&why);

    /* errors of the calls */
    qalign_info inf;
    qalign_describe(m, &inf);
    qalign_ask_options big = {.max_tokens = inf.l_max_pos + 1}, nan_t = {.max_tokens = 4, .temperature = NAN};
    qalign_answer x;
    check(qalign_ask_images(c, &qi, 1, "", NULL, &x, err, sizeof err) == QALIGN_ERR_ARG && strstr(err, "empty"),
          "an empty question: QALIGN_ERR_ARG");
    check(qalign_ask_images(c, &qi, 1, q, &big, &x, err, sizeof err) == QALIGN_ERR_ARG && strstr(err, "context"),
          "max_tokens above the model's context: QALIGN_ERR_ARG naming the context");
    check(qalign_ask_images(c, &qi, 1, q, &nan_t, &x, err, sizeof err) == QALIGN_ERR_ARG && strstr(err, "temperature"),
          "a NaN temperature: QALIGN_ERR_ARG");
    check(qalign_ask_prompt(c, &qi, 1, q, &(qalign_ask_options){.max_tokens = 2, .prompt = "nope"}, &x, err, sizeof err) ==
              QALIGN_ERR_ARG && strstr(err, "mplug-owl2"),
          "an unknown template name: QALIGN_ERR_ARG listing the names");
    check(qalign_kv_bytes_per_token(m) == (size_t)2 * inf.l_layers * inf.l_kv_heads * (inf.l_dim / inf.l_heads) * 4,
          "K/V bytes per token = 2 x layers x kv_heads x head_dim x 4");
    int ids[3] = {1, 15043, 2};
    char txt[64];
    check(qalign_detokenize(m, ids, 3, txt, sizeof txt) == (int)strlen(txt) && qalign_detokenize(m, (int[]){-5}, 1, txt, 8) < 0,
          "qalign_detokenize: the text's length; -1 for an id out of range");
    qalign_answer_free(&a);
    qalign_answer_free(&b);
    image_free(&img);
    qalign_ctx_free(c);
    qalign_close(m);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
