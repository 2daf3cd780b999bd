/* options.h - the qalign command's options as one table (options.c): each row says the
 * option's name, its value, where the value goes (a setter and a field of Options), the
 * commands it applies to and its help text. The argv loop and the options' part of `--help`
 * iterate over that table (and tests/test_options.py checks the README names each row), so
 * a new option is one row; the server's options (--listen, --stdio, ...) are rows too and go
 * into Options.srv (serve.h's ServeOptions).
 *
 * The cross-option checks (which options go together) and the commands themselves are in
 * cli.c; the setters here check only their own value, with the CLI's one-line messages. */
#ifndef QALIGN_OPTIONS_H
#define QALIGN_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "serve.h"
#include "sink.h"

typedef struct {
    const char *preset;     /* --preset, NULL = the library's default (one-align) */
    const char *task;       /* one of qalign_tasks() */
    int task_given;         /* -t was given */
    const char *prompt;     /* template or name (--prompt), NULL: the preset's */
    const char *levels;     /* --levels spec, or NULL */
    int no_pad;             /* --no-pad (1), --pad (-1) */
    int video;              /* --video: inputs are frames of one video */
    const char *frames_dir; /* --frames DIR */
    int64_t max_frames;     /* --max-frames, 0 = no limit */
    int per_frame;          /* --per-frame */
    int one_prompt;         /* --one-prompt: the inputs are the images of one prompt */
    const char *anchors_dir;/* --anchors DIR */
    int json;               /* JSON lines on stdout */
    const char *scale;      /* --scale: one of qalign_scales(), or NULL (the score's own range) */
    int quiet;              /* -q */
    int precise;            /* --precise */
    int no_mmap;            /* --no-mmap */
    int timings;            /* --timings */
    int threads;            /* --threads, 0 = default */
    const char *dump_dir;   /* --dump */
    SinkOptions sink;       /* --csv --jsonl --report --eval --resume */
    const char *shard;      /* --shard I/N */
    int batch;              /* --batch: images per decoder pass */
    const char *compare[2]; /* --compare A B */
    double ffmpeg_timeout;  /* --ffmpeg-timeout */
    int64_t max_pixels;     /* --max-pixels, 0: not given (the decoders' own limit; a server: 40 M) */
    /* --ask: answers in words */
    const char *ask;        /* the question, or NULL: scoring */
    int score;              /* --score: the score too, from the same visual rows */
    int max_tokens;         /* --max-tokens (default 256) */
    float temperature;      /* --temperature (0: greedy) */
    float top_p;            /* --top-p */
    int top_k;              /* --top-k */
    uint64_t seed;          /* --seed */
    const char *decoding_flag; /* the first decoding option given (they need --ask) */
    /* the other commands */
    int help;               /* -h, --help */
    int info;               /* --info */
    int verify;             /* --verify */
    const char *tokenize_text; /* --tokenize TEXT */
    ServeOptions srv;       /* --listen, --stdio and their options (serve.h) */
    /* the positional arguments */
    const char *model_path; /* MODEL (NULL with --compare) */
    char **inputs;          /* INPUT... (malloc'ed; options_free) */
    int n_inputs;
} Options;

/* The commands an option applies to (Option.cmds). */
enum {
    CMD_SCORE = 1 << 0,     /* qalign MODEL INPUT... */
    CMD_ASK = 1 << 1,       /* qalign --ask QUESTION MODEL INPUT... */
    CMD_COMPARE = 1 << 2,   /* qalign --compare A B INPUT... */
    CMD_SERVE = 1 << 3,     /* qalign --listen HOST:PORT MODEL, qalign --stdio MODEL */
    CMD_INFO = 1 << 4,      /* qalign --info MODEL */
    CMD_VERIFY = 1 << 5,    /* qalign --verify MODEL */
    CMD_TOKENIZE = 1 << 6,  /* qalign --tokenize TEXT MODEL */
    CMD_DECODE = 1 << 7,    /* qalign --decode FILE OUT.ppm */
    CMD_PREPROCESS = 1 << 8,/* qalign --preprocess-only [--size N] [--no-pad] [--model MODEL] FILE OUT.ppm */
    CMD_HELP = 1 << 9,      /* qalign --help */
    CMD_RUN = CMD_SCORE | CMD_ASK | CMD_COMPARE /* the commands that take INPUTs */
};

/* The parts of --help the options are listed in, in order. */
enum { SEC_SCORING, SEC_OUTPUT, SEC_ASK, SEC_COMMANDS, SEC_SERVING, N_SECTIONS };

typedef struct Option Option;
struct Option {
    const char *name;       /* "--task" */
    const char *alias;      /* "-t", or NULL */
    const char *arg;        /* the value in --help ("N", "FILE"; "{tasks}" and "{scales}" are the
                               library's lists joined by '|'), NULL: none */
    int nargs;              /* values taken from argv: 0, 1 or 2 */
    /* where it goes: the setter stores v[0..nargs) at offset off of Options (0, or -1 with a
       one-line reason in err); lo, hi: set_int's range, set_flag's value (lo) */
    int (*set)(Options *o, const Option *opt, const char *given, char **v, char *err, size_t errlen);
    size_t off;
    long lo, hi;
    unsigned cmds;          /* CMD_*: the commands it applies to */
    int section;            /* SEC_*: where --help lists it */
    const char *synopsis;   /* SEC_COMMANDS: the command line ("qalign --info MODEL"), else NULL */
    const char *help;       /* lines separated by '\n' */
};

/* The table (n gets its number of rows). */
const Option *options_table(int *n);

/* Fill in the defaults. */
void options_init(Options *o);
/* Parse argv[1..argc) into o (defaults first: options_init). Stops at -h/--help (o->help set).
 * 0, or -1 with the CLI's one-line message in err ("unknown option '--x' (try --help)", "--batch
 * expects an integer in [1, 64], got 'x'", ...). --api-key's value is blanked in argv. */
int options_parse(Options *o, int argc, char **argv, char *err, size_t errlen);
void options_free(Options *o);

/* One section (SEC_*) of --help: its title, then its options. */
void options_help(FILE *f, int section);

/* A pixel count such as "40M" (K, M, G, T = 1e3 .. 1e12), 1 to 1e12: 0, or -1. */
int options_parse_pixels(const char *v, int64_t *out);

#endif
