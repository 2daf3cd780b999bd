/* options.c - the qalign command's option table (options.h) and what iterates over it:
 * the argv loop and the options' part of --help.
 *
 * A row: name, alias, the value's name in --help, how many values it takes, where they go
 * (a setter and a field of Options; lo and hi are the setter's range or value), the commands
 * it applies to, the --help section, and the help text (lines separated by '\n'). Each setter
 * checks its own value only; which options go together is cli.c's check_options. */
#include "options.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "image.h"
#include "qalign.h"
#include "video.h"

#define F(field) offsetof(Options, field)
#define AT(o, opt, type) ((type *)((char *)(o) + (opt)->off))

/* ---- the setters: where a value goes ---------------------------------------------------- */

typedef int Setter(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen);

static int int_in(const char *s, const char *flag, long lo, long hi, long *out, char *err, size_t errlen) {
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (errno || *end || end == s || x < lo || x > hi)
        return fail(err, errlen, "%s expects an integer in [%ld, %ld], got '%s'", flag, lo, hi, s);
    *out = x;
    return 0;
}

static int set_flag(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    *AT(o, opt, int) = (int)opt->lo;
    return 0;
}

static int set_str(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    *AT(o, opt, const char *) = v[0];
    return 0;
}

static int set_int(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    long x = 0;
    if (int_in(v[0], given, opt->lo, opt->hi, &x, err, errlen)) return -1;
    *AT(o, opt, int) = (int)x;
    return 0;
}

static int set_int64(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    long x = 0;
    if (int_in(v[0], given, opt->lo, opt->hi, &x, err, errlen)) return -1;
    *AT(o, opt, int64_t) = x;
    return 0;
}

/* whole seconds into a double */
static int set_seconds(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    long x = 0;
    if (int_in(v[0], given, opt->lo, opt->hi, &x, err, errlen)) return -1;
    *AT(o, opt, double) = (double)x;
    return 0;
}

static int set_task(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    int n;
    const char *const *tasks = qalign_tasks(&n);
    char w[128];
    for (int k = 0; k < n; k++)
        if (!strcmp(v[0], tasks[k])) {
            o->task = tasks[k];
            o->task_given = 1;
            return 0;
        }
    return fail(err, errlen, "--task must be %s, got '%s'", words_or(w, sizeof w, tasks, sizeof *tasks, n), v[0]);
}

static int set_scale(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    int n;
    const qalign_scale *sc = qalign_scales(&n), *found = qalign_scale_find(v[0]);
    char w[128];
    if (found) {
        o->scale = found->name;
        return 0;
    }
    return fail(err, errlen, "--scale must be %s, got '%s'", words_or(w, sizeof w, &sc[0].name, sizeof sc[0], n), v[0]);
}

static int set_compare(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    if (o->compare[0]) return fail(err, errlen, "--compare given twice");
    o->compare[0] = v[0];
    o->compare[1] = v[1];
    return 0;
}

static int set_ask(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    const char *q = v[0];
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
    if (!*q) return fail(err, errlen, "--ask: the question is empty");
    o->ask = v[0];
    return 0;
}

/* --max-tokens, --top-k: integers; they go with --ask (the first one given is remembered) */
static int set_decoding_int(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    if (!o->decoding_flag) o->decoding_flag = opt->name;
    return set_int(o, opt, given, v, err, errlen);
}

/* --temperature (hi < 0: no upper bound), --top-p (hi 1) */
static int set_decoding_float(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    if (!o->decoding_flag) o->decoding_flag = opt->name;
    char *end;
    errno = 0;
    double d = strtod(v[0], &end);
    if (errno || *end || end == v[0] || !isfinite(d) || d < (double)opt->lo || (opt->hi >= 0 && d > (double)opt->hi))
        return fail(err, errlen, "%s expects a number in [%ld, %s, got '%s'", given, opt->lo, opt->hi >= 0 ? "1]" : "inf)", v[0]);
    *AT(o, opt, float) = (float)d;
    return 0;
}

static int set_seed(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    if (!o->decoding_flag) o->decoding_flag = opt->name;
    char *end;
    errno = 0;
    unsigned long long sd = strtoull(v[0], &end, 10);
    if (errno || *end || end == v[0] || *v[0] == '-') return fail(err, errlen, "--seed expects an integer in [0, 2^64), got '%s'", v[0]);
    o->seed = sd;
    return 0;
}

/* "40M", "1G", "250000": pixels (K, M, G, T = 1e3, 1e6, 1e9, 1e12; 1 to 1e12) */
int options_parse_pixels(const char *v, int64_t *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || !(x >= 0)) return -1;
    if (*end == 'K' || *end == 'k') x *= 1e3, end++;
    else if (*end == 'M' || *end == 'm') x *= 1e6, end++;
    else if (*end == 'G' || *end == 'g') x *= 1e9, end++;
    else if (*end == 'T' || *end == 't') x *= 1e12, end++;
    if (*end || x < 1 || x > 1e12) return -1;
    *out = (int64_t)x;
    return 0;
}

static int set_max_pixels(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    if (options_parse_pixels(v[0], AT(o, opt, int64_t)))
        return fail(err, errlen, "--max-pixels expects a pixel count such as 40M or 250000 (1 to 1T), got '%s'", v[0]);
    return 0;
}

static int set_request_pixels(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    if (options_parse_pixels(v[0], AT(o, opt, int64_t)))
        return fail(err, errlen, "--max-request-pixels expects a count such as 400M or 1G (1 to 1T), got '%s'", v[0]);
    return 0;
}

/* --decode and --preprocess-only are commands of their own, read before the other options */
static int set_first(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    return fail(err, errlen, "%s must be the first argument: qalign %s FILE OUT.ppm", given, given);
}

/* an option of another command only (--size: cmd_decode reads it) */
static int set_elsewhere(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    return fail(err, errlen, "unknown option '%s' (try --help)", given);
}

/* ---- the server's setters --------------------------------------------------------------- */

static int set_listen(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    if (!strrchr(v[0], ':')) return fail(err, errlen, "--listen expects HOST:PORT (e.g. 127.0.0.1:8080), got '%s'", v[0]);
    o->srv.listen = v[0];
    return 0;
}

static int set_batch_wait(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    long x = 0;
    if (int_in(v[0], given, opt->lo, opt->hi, &x, err, errlen))
        return fail(err, errlen, "--batch-wait expects milliseconds in [%ld, %ld], got '%s'", opt->lo, opt->hi, v[0]);
    o->srv.batch_wait_ms = (int)x;
    return 0;
}

/* "64M", "100000", "1G", "512K", "1T" (1 byte to 1 TB) */
static int set_size(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    char *end;
    errno = 0;
    double x = strtod(v[0], &end);
    double mul = 1;
    if (!errno && end != v[0] && x >= 0) {
        if (*end == 'K' || *end == 'k') mul = 1024, end++;
        else if (*end == 'M' || *end == 'm') mul = 1024.0 * 1024, end++;
        else if (*end == 'G' || *end == 'g') mul = 1024.0 * 1024 * 1024, end++;
        else if (*end == 'T' || *end == 't') mul = 1024.0 * 1024 * 1024 * 1024, end++;
        if (*end == 'B' || *end == 'b') end++;
        if (!*end && x * mul >= 1 && x * mul <= (double)((int64_t)1 << 40)) {
            *AT(o, opt, int64_t) = (int64_t)(x * mul);
            return 0;
        }
    }
    return fail(err, errlen, "%s expects a size from 1 to 1T bytes, such as 64M, 1G or 1T, got '%s'", given, v[0]);
}

static int set_timeout(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    char *end;
    double t = strtod(v[0], &end);
    if (end == v[0] || *end || !(t >= 0.1 && t <= 86400))
        return fail(err, errlen, "--timeout expects seconds in [0.1, 86400], got '%s'", v[0]);
    o->srv.timeout = t;
    return 0;
}

static int set_api_key(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    if (!v[0][0]) return fail(err, errlen, "--api-key is empty");
    /* a copy, then the argument blanked: /proc/PID/cmdline (ps) no longer shows it */
    if (!(o->srv.api_key = strdup(v[0]))) return fail(err, errlen, "out of memory");
    memset(v[0], 0, strlen(v[0]));
    return 0;
}

static int set_api_key_file(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen) {
    char key[4096];
    FILE *f = fopen(v[0], "r");
    if (!f) return fail(err, errlen, "--api-key-file %s: %s", v[0], strerror(errno));
    size_t n = fread(key, 1, sizeof key - 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) return fail(err, errlen, "--api-key-file %s: cannot read it", v[0]);
    key[n] = 0;
    key[strcspn(key, "\r\n")] = 0; /* the first line */
    for (size_t k = strlen(key); k > 0 && (key[k - 1] == ' ' || key[k - 1] == '\t'); k--) key[k - 1] = 0;
    if (!key[0]) return fail(err, errlen, "--api-key-file %s: the first line is empty", v[0]);
    if (!(o->srv.api_key = strdup(key))) return fail(err, errlen, "out of memory");
    return 0;
}

/* ---- the table -------------------------------------------------------------------------- */

#define ASK (CMD_ASK)
#define RUN (CMD_RUN)
#define MODEL_CMDS (CMD_RUN | CMD_SERVE | CMD_INFO | CMD_VERIFY | CMD_TOKENIZE)
#define CTX (CMD_SCORE | CMD_ASK | CMD_COMPARE | CMD_SERVE) /* the options of a scoring context */
#define SERVE (CMD_SERVE)

static const Option OPTIONS[] = {
    /* scoring */
    {"--preset", NULL, "NAME", 1, set_str, F(preset), 0, 0, CTX, SEC_SCORING, NULL,
     "score as one of the family's scorers does (below; default\n"
     "one-align); the flags below override what it sets"},
    {"--task", "-t", "{tasks}", 1, set_task, 0, 0, 0, CTX, SEC_SCORING, NULL,
     "what to rate (default quality; 'aesthetic'\n"
     "is pyiqa's wording of the aesthetics prompt)"},
    {"--scale", NULL, "{scales}", 1, set_scale, 0, 0, 0, CTX, SEC_SCORING, NULL,
     "map the score linearly from the levels' weight range (1-5\n"
     "for one-align, 0-1 for q-align and q-instruct, 0-100 for\n"
     "compare2score) to this range (default: the weights' range)"},
    {"--video", NULL, NULL, 0, set_flag, F(video), 1, 0, RUN, SEC_SCORING, NULL,
     "all INPUTs are the frames of ONE video, in order (1 per second)"},
    {"--frames", NULL, "DIR", 1, set_str, F(frames_dir), 0, 0, RUN, SEC_SCORING, NULL,
     "the images in DIR (natural order) are the frames of one video"},
    {"--max-frames", NULL, "N", 1, set_int64, F(max_frames), 1, QALIGN_MAX_FRAMES, RUN, SEC_SCORING, NULL,
     "videos: take at most N of the 1-fps frames, evenly spaced\n"
     "(deviates from the original loader, which has no limit)"},
    {"--per-frame", NULL, NULL, 0, set_flag, F(per_frame), 1, 0, CMD_SCORE, SEC_SCORING, NULL,
     "videos: also score each frame as an image (the frames' visual\n"
     "tokens are reused); printed after the video's line (--json: one\n"
     "line per frame with \"frame\": k); result files get the video's row"},
    {"--one-prompt", NULL, NULL, 0, set_flag, F(one_prompt), 1, 0, RUN, SEC_SCORING, NULL,
     "all INPUTs are the images of ONE prompt, one per <|image|>, in\n"
     "order (e.g. compare2score without anchors: anchor, image)"},
    {"--anchors", NULL, "DIR", 1, set_str, F(anchors_dir), 0, 0, CMD_SCORE | CMD_COMPARE, SEC_SCORING, NULL,
     "the anchor images of a comparison scorer (compare2score: the 5\n"
     "of VQA-CityU/Anchor_images, natural order; run.sh fetches them)"},
    {"--prompt", NULL, "TEXT|NAME", 1, set_str, F(prompt), 0, 0, CTX, SEC_SCORING, NULL,
     "prompt template with <|image|> and optional {task} {input}, or the\n"
     "name of one below; with --ask: a template with <|image|> and\n"
     "{question}, or mplug-owl2 (default: \"USER: <|image|>{question} ASSISTANT:\")\n"
     "or co-instruct (Co-Instruct's, first..eighth image for several)"},
    {"--levels", NULL, "W=X,...", 1, set_str, F(levels), 0, 0, CTX, SEC_SCORING, NULL,
     "level words and weights (default excellent=5,good=4,fair=3,\n"
     "poor=2,bad=1); W may be several words W1|W2|W3 whose logits are\n"
     "averaged; --report takes words among excellent good fair poor bad\n"
     "only"},
    {"--no-pad", NULL, NULL, 0, set_flag, F(no_pad), 1, 0, CTX | CMD_PREPROCESS, SEC_SCORING, NULL,
     "no expand2square (resize the short side and centre-crop)"},
    {"--pad", NULL, NULL, 0, set_flag, F(no_pad), -1, 0, CTX | CMD_PREPROCESS, SEC_SCORING, NULL,
     "expand2square even where the preset has none"},
    {"--precise", NULL, NULL, 0, set_flag, F(precise), 1, 0, CTX, SEC_SCORING, NULL,
     "bf16 models: f32 activations (slower; reproduces the fp32\n"
     "reference to 1e-4) instead of bf16 ones"},
    /* output */
    {"--json", NULL, NULL, 0, set_flag, F(json), 1, 0, CMD_SCORE | CMD_ASK, SEC_OUTPUT, NULL,
     "one JSON object per line on stdout (the --jsonl row)"},
    {"--csv", NULL, "FILE", 1, set_str, F(sink.csv_path), 0, 0, CMD_SCORE | CMD_ASK, SEC_OUTPUT, NULL,
     "append one row per input (synced as it comes; never truncated;\n"
     "each row says how it was made: model, prompt, levels, pad, ...;\n"
     "a FIFO or character device is written in place, a block device\n"
     "or socket refused)"},
    {"--jsonl", NULL, "FILE", 1, set_str, F(sink.jsonl_path), 0, 0, CMD_SCORE | CMD_ASK, SEC_OUTPUT, NULL,
     "the same rows as --csv, one JSON object per line (appended,\n"
     "synced, never truncated; the same FIFO and device rules)"},
    {"--resume", NULL, NULL, 0, set_flag, F(sink.resume), 1, 0, CMD_SCORE | CMD_ASK, SEC_OUTPUT, NULL,
     "skip inputs that have a good row made the same way in the\n"
     "--csv/--jsonl file(s); failed ones and ones made another way\n"
     "are scored again"},
    {"--shard", NULL, "I/N", 1, set_str, F(shard), 0, 0, RUN, SEC_OUTPUT, NULL,
     "score only the I-th of N deterministic slices of the inputs"},
    {"--eval", NULL, "LABELS.csv", 1, set_str, F(sink.labels_path), 0, 0, CMD_SCORE | CMD_ASK, SEC_OUTPUT, NULL,
     "print SRCC/PLCC/KRCC against path,mos labels"},
    {"--report", NULL, "FILE.html", 1, set_str, F(sink.report_path), 0, 0, CMD_SCORE, SEC_OUTPUT, NULL,
     "a self-contained gallery sorted by score, written to a new file\n"
     "beside FILE (random name) and renamed over FILE at the end;\n"
     "a FIFO or character device is written in place, other files\n"
     "that are not regular (devices, sockets) are refused"},
    {"--dump", NULL, "DIR", 1, set_str, F(dump_dir), 0, 0, CMD_SCORE, SEC_OUTPUT, NULL,
     "write every intermediate array as DIR/<name>.npy (one input)"},
    {"--timings", NULL, NULL, 0, set_flag, F(timings), 1, 0, RUN, SEC_OUTPUT, NULL,
     "seconds per stage on stderr, after each decoder batch (and each\n"
     "video; cumulative) and at the end"},
    {"--ffmpeg-timeout", NULL, "S", 1, set_seconds, F(ffmpeg_timeout), 0, 1000000, RUN, SEC_OUTPUT, NULL,
     "stop ffmpeg/ffprobe when they stay silent for S seconds (the\n"
     "video fails; default {ffmpeg_timeout}; 0 = never)"},
    {"--quiet", "-q", NULL, 0, set_flag, F(quiet), 1, 0, RUN, SEC_OUTPUT, NULL,
     "no progress line"},
    {"--threads", NULL, "N", 1, set_int, F(threads), 1, 4096, CTX, SEC_OUTPUT, NULL,
     "OpenMP threads (default: all cores)"},
    {"--batch", NULL, "N", 1, set_int, F(batch), 1, QALIGN_MAX_BATCH, CTX, SEC_OUTPUT, NULL,
     "images per decoder pass (default 8): each decoder weight is\n"
     "read once per batch; a killed run loses at most one batch"},
    {"--max-pixels", NULL, "N", 1, set_max_pixels, F(max_pixels), 0, 0, RUN | SERVE, SEC_OUTPUT, NULL,
     "refuse images over N pixels (width x height; K, M, G = 1e3, 1e6,\n"
     "1e9), read from the file's header before decoding (default:\n"
     "Pillow's limit, {max_pixels}; a server's default is 40M)"},
    {"--no-mmap", NULL, NULL, 0, set_flag, F(no_mmap), 1, 0, MODEL_CMDS, SEC_OUTPUT, NULL,
     "read the model into this process's memory (2 MB pages where\n"
     "the kernel allows) instead of mapping the file: faster per\n"
     "image where page faults are slow (VMs), for long runs; the\n"
     "copy is not shared with other processes"},
    {"--help", "-h", NULL, 0, set_flag, F(help), 1, 0, CMD_HELP, SEC_OUTPUT, NULL,
     "this help"},
    /* answers in words */
    {"--ask", NULL, "QUESTION", 1, set_ask, 0, 0, 0, ASK | SERVE, SEC_ASK, NULL,
     "answer QUESTION about each INPUT (a video: its frames in one\n"
     "prompt; --one-prompt: all images in one); prints the answer, then\n"
     "the file (as it comes on a terminal); --json rows add question,\n"
     "answer, tokens, finish, decoding; --csv has its own columns"},
    {"--max-tokens", NULL, "N", 1, set_decoding_int, F(max_tokens), 1, 1000000, ASK, SEC_ASK, NULL,
     "tokens to generate at most (default 256; up to the model's context)"},
    {"--temperature", NULL, "T", 1, set_decoding_float, F(temperature), 0, -1, ASK, SEC_ASK, NULL,
     "0: greedy (the default); > 0: sample, with --top-p P, --top-k K\n"
     "and --seed S (the same seed, the same answer)"},
    {"--top-p", NULL, "P", 1, set_decoding_float, F(top_p), 0, 1, ASK, SEC_ASK, NULL,
     "sampling: keep the most likely tokens up to probability P (0 or 1:\n"
     "all)"},
    {"--top-k", NULL, "K", 1, set_decoding_int, F(top_k), 0, 1000000, ASK, SEC_ASK, NULL,
     "sampling: keep the K most likely tokens (0: all)"},
    {"--seed", NULL, "S", 1, set_seed, 0, 0, 0, ASK, SEC_ASK, NULL,
     "sampling: the same seed gives the same answer, whatever the batch"},
    {"--score", NULL, NULL, 0, set_flag, F(score), 1, 0, ASK, SEC_ASK, NULL,
     "with --ask: the score too, from the same pass over the image"},
    /* other commands */
    {"--compare", NULL, "A B", 2, set_compare, 0, 0, 0, CMD_COMPARE, SEC_COMMANDS, "qalign --compare A B INPUT...",
     "score the INPUTs with two model files (e.g. bf16\n"
     "and q8_0): per-input scores and differences, the\n"
     "largest and mean |difference|, SRCC and PLCC"},
    {"--info", NULL, NULL, 0, set_flag, F(info), 1, 0, CMD_INFO, SEC_COMMANDS, "qalign --info MODEL",
     "the model's header and the compiled kernels"},
    {"--verify", NULL, NULL, 0, set_flag, F(verify), 1, 0, CMD_VERIFY | SERVE, SEC_COMMANDS, "qalign --verify MODEL",
     "check every tensor against the checksum export.py\n"
     "wrote (reads the whole file); with --listen or\n"
     "--stdio: before serving (/health says so)"},
    {"--tokenize", NULL, "TEXT", 1, set_str, F(tokenize_text), 0, 0, CMD_TOKENIZE, SEC_COMMANDS,
     "qalign --tokenize TEXT MODEL",
     "TEXT's token ids (with BOS)"},
    {"--decode", NULL, NULL, 0, set_first, 0, 0, 0, CMD_DECODE, SEC_COMMANDS, "qalign --decode FILE OUT.ppm",
     "decode an image to 8-bit RGB (binary PPM)"},
    {"--preprocess-only", NULL, NULL, 0, set_first, 0, 0, 0, CMD_PREPROCESS, SEC_COMMANDS,
     "qalign --preprocess-only [--size N] [--no-pad] [--model MODEL] FILE OUT.ppm",
     "the image as the model sees it: padded to a square\n"
     "(--no-pad: resized, centre-cropped) and resized to\n"
     "N, with MODEL's fill colour"},
    {"--size", NULL, "N", 1, set_elsewhere, 0, 0, 0, CMD_PREPROCESS, SEC_COMMANDS, NULL,
     "the side of the square (default: MODEL's size, else 448)"},
    /* serving */
    {"--listen", NULL, "HOST:PORT", 1, set_listen, 0, 0, 0, SERVE, SEC_SERVING, NULL,
     "HTTP/1.1 server: POST /score, GET /health, GET /metrics\n"
     "(HOST empty: 127.0.0.1; port 0: any free port, printed)"},
    {"--stdio", NULL, NULL, 0, set_flag, F(srv.stdio), 1, 0, SERVE, SEC_SERVING, NULL,
     "JSON lines: one request per line on stdin, one answer per line\n"
     "on stdout ({\"id\", \"path\"|\"image\"|\"frames\", \"task\", \"scale\"})"},
    {"--batch-wait", NULL, "MS", 1, set_batch_wait, 0, 0, 60000, SERVE, SEC_SERVING, NULL,
     "longest a request waits for others to share its batch (10)"},
    {"--max-body", NULL, "SIZE", 1, set_size, F(srv.max_body), 0, 0, SERVE, SEC_SERVING, NULL,
     "largest request body / stdin line, e.g. 64M, 1G (1 to 1T; default 64M)"},
    {"--max-queue", NULL, "N", 1, set_int, F(srv.max_queue), 1, 100000, SERVE, SEC_SERVING, NULL,
     "requests admitted at once; more get 503 (default 32)"},
    {"--max-connections", NULL, "N", 1, set_int, F(srv.max_connections), 1, 100000, SERVE, SEC_SERVING, NULL,
     "open connections at once; more get 503 (default 128)"},
    {"--timeout", NULL, "S", 1, set_timeout, 0, 0, 0, SERVE, SEC_SERVING, NULL,
     "a request must arrive within S seconds, plus 1 s per MB of\n"
     "body, else 408; idle keep-alive connections close (default 10)"},
    {"--api-key", NULL, "KEY", 1, set_api_key, 0, 0, 0, SERVE, SEC_SERVING, NULL,
     "require 'Authorization: Bearer KEY'. Better: $QALIGN_API_KEY or\n"
     "--api-key-file FILE (its first line), which ps cannot show (qalign\n"
     "blanks a KEY on its command line once read, but not at once)"},
    {"--api-key-file", NULL, "FILE", 1, set_api_key_file, 0, 0, 0, SERVE, SEC_SERVING, NULL,
     "the key is FILE's first line"},
    {"--max-request-pixels", NULL, "N", 1, set_request_pixels, F(srv.max_request_pixels), 0, 0, SERVE, SEC_SERVING, NULL,
     "the images (or frames) of one request together (default 400M); the\n"
     "images past it get an error"},
};
#define N_OPTIONS ((int)(sizeof OPTIONS / sizeof OPTIONS[0]))

const Option *options_table(int *n) {
    if (n) *n = N_OPTIONS;
    return OPTIONS;
}

/* ---- parsing ---------------------------------------------------------------------------- */

void options_init(Options *o) {
    *o = (Options){.task = "quality", .batch = 8, .ffmpeg_timeout = VIDEO_DEFAULT_TIMEOUT,
                   .srv = (ServeOptions)SERVE_DEFAULTS};
}

static const Option *find_option(const char *a) {
    for (int k = 0; k < N_OPTIONS; k++)
        if (!strcmp(a, OPTIONS[k].name) || (OPTIONS[k].alias && !strcmp(a, OPTIONS[k].alias))) return &OPTIONS[k];
    return NULL;
}

int options_parse(Options *o, int argc, char **argv, char *err, size_t errlen) {
    int only_positional = 0;
    free(o->inputs);
    if (!(o->inputs = malloc((size_t)(argc > 0 ? argc : 1) * sizeof(char *)))) return fail(err, errlen, "out of memory");
    o->n_inputs = 0;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (only_positional || a[0] != '-' || !a[1]) { /* MODEL (unless --compare gave the models), then INPUTs */
            if (!o->model_path && !o->compare[0]) o->model_path = a;
            else o->inputs[o->n_inputs++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            only_positional = 1;
            continue;
        }
        const Option *opt = find_option(a);
        if (!opt) return fail(err, errlen, "unknown option '%s' (try --help)", a);
        if (i + opt->nargs >= argc) return fail(err, errlen, "%s needs a value (try --help)", a);
        if (opt->set(o, opt, a, argv + i + 1, err, errlen) != 0) return -1;
        i += opt->nargs;
        if (o->help) return 0;
    }
    if (o->compare[0] && o->model_path) { /* a positional before --compare was an input */
        memmove(o->inputs + 1, o->inputs, (size_t)o->n_inputs * sizeof *o->inputs);
        o->inputs[0] = (char *)o->model_path;
        o->n_inputs++;
        o->model_path = NULL;
    }
    return 0;
}

void options_free(Options *o) {
    free(o->inputs);
    o->inputs = NULL;
    o->n_inputs = 0;
}

/* ---- --help ----------------------------------------------------------------------------- */

/* s with the placeholders filled in: {tasks} and {scales} (the library's lists, joined by '|')
 * and the defaults that live in other headers. Returns the number of characters written. */
static int put_text(FILE *f, const char *s) {
    int w = 0, n;
    while (*s) {
        if (!strncmp(s, "{tasks}", 7)) {
            const char *const *t = qalign_tasks(&n);
            for (int k = 0; k < n; k++) w += fprintf(f, "%s%s", k ? "|" : "", t[k]);
            s += 7;
        } else if (!strncmp(s, "{scales}", 8)) {
            const qalign_scale *sc = qalign_scales(&n);
            for (int k = 0; k < n; k++) w += fprintf(f, "%s%s", k ? "|" : "", sc[k].name);
            s += 8;
        } else if (!strncmp(s, "{max_pixels}", 12)) {
            w += fprintf(f, "%zu", (size_t)IMAGE_MAX_PIXELS);
            s += 12;
        } else if (!strncmp(s, "{ffmpeg_timeout}", 16)) {
            w += fprintf(f, "%d", VIDEO_DEFAULT_TIMEOUT);
            s += 16;
        } else {
            fputc(*s++, f), w++;
        }
    }
    return w;
}

/* "-t, --task quality|aesthetics|aesthetic"; returns its width */
static int put_name(FILE *f, const Option *opt) {
    int w = fprintf(f, "%s%s%s", opt->alias ? opt->alias : "", opt->alias ? ", " : "", opt->name);
    if (opt->arg) w += fprintf(f, " ") + put_text(f, opt->arg);
    return w;
}

static const char *const SECTION_TITLE[N_SECTIONS] = {
    "scoring:", "output:", "answers in words (Q-Instruct, Co-Instruct, any mPLUG-Owl2 chat checkpoint):",
    "other commands:", "serving (see README, 'As a server'):"};

void options_help(FILE *f, int section) {
    fprintf(f, "%s\n", SECTION_TITLE[section]);
    for (int k = 0; k < N_OPTIONS; k++) {
        const Option *opt = &OPTIONS[k];
        if (opt->section != section) continue;
        int col = section == SEC_COMMANDS ? 42 : 26, w;
        fputs("  ", f);
        if (opt->synopsis) w = 2 + fprintf(f, "%s", opt->synopsis);
        else w = 2 + (section == SEC_COMMANDS ? fprintf(f, "  ") : 0) + put_name(f, opt);
        if (w <= col - 2) fprintf(f, "%*s", col - w, "");
        else if (section == SEC_COMMANDS) fprintf(f, "\n%*s", col, "");
        else fputs("  ", f);
        for (const char *s = opt->help; *s;) { /* line by line, each after the first indented */
            const char *nl = strchr(s, '\n');
            size_t len = nl ? (size_t)(nl - s) : strlen(s);
            char line[256];
            snprintf(line, sizeof line, "%.*s", (int)len, s);
            put_text(f, line);
            fputc('\n', f);
            if (!nl) break;
            fprintf(f, "%*s", col, "");
            s = nl + 1;
        }
    }
}
