/* app.h - the batch side of qalign: inputs, videos through ffmpeg, result files with
 * resume, evaluation against labels, an HTML gallery and a progress line.
 *
 * Everything here is independent of the model: qalign.c's main() scores, app.c does
 * the rest. Library conventions as in image.h: functions return 0 (or a count) on
 * success and -1 on failure with a one-line reason in err[0..errlen); nothing here
 * exits or aborts, and nothing prints except the progress functions and
 * sink_finish(), which print to the FILE/stream they are documented to use.
 *
 * Decisions (the tests in tests/test_app.py check each of them):
 *
 *  Inputs     An argument is a file, a directory (walked recursively) or @LIST (a text
 *             file, one path per line; blank lines and lines starting with # are
 *             skipped - a comment line that names an existing file gives a warning
 *             (ItemList.warning), write ./#name for such a file -, leading/trailing blanks
 *             and a CR are trimmed, relative paths are relative to the current directory
 *             (not to the list's), a line is always a path - never a nested @list; @-
 *             reads the list from stdin). A path that starts with @ is given as ./@name.
 *             Kinds come from the content, never the name: images by image_sniff()
 *             (PNG, JPEG, BMP, PNM); videos by container magic (MP4/MOV/3GP "ftyp" or
 *             a QuickTime atom, Matroska/WebM 1A45DFA3, AVI "RIFF....AVI ", MPEG-TS
 *             (0x47 every 188 bytes) and M2TS (every 192), FLV, MPEG-PS/ES, ASF/WMV,
 *             Ogg with Theora, Y4M); M4A, WAV and Ogg audio are not media. Recognised
 *             image formats qalign does not decode (GIF, WebP, TIFF, HEIF/AVIF, JPEG 2000,
 *             JPEG XL) are error items that say so: Pillow would open them (GIF: its first
 *             frame), so silently skipping them would change a data set; they are not
 *             sent to ffmpeg either (its GIF decoding would not be Pillow's).
 *             In a directory walk, dot-files and dot-directories are skipped (unless
 *             include_hidden), symbolic links are followed (a link back to an ancestor
 *             is not descended again), and a file that is neither image nor video is
 *             skipped - unless its extension is a media one (.jpg, .mp4, ...; see
 *             MEDIA_EXTENSIONS in app.c), then it is an error item ("empty file",
 *             "not an image or video"): a broken photo is reported, a README is not.
 *             A path named on the command line or in a list is always an item: missing,
 *             unreadable, not a regular file or of unknown content -> an error item.
 *             Paths are lightly normalised ("//" -> "/", "./" segments dropped, no
 *             trailing "/"; ".." and symlinks are kept as written), then the whole list
 *             is sorted by strcmp (bytes, locale-independent) and exact duplicates are
 *             removed. Natural order (frame_2 < frame_10) is optional, for --frames DIR.
 *  Shards     --shard I/N, 1 <= I <= N: item k (0-based, of the sorted deduplicated
 *             list, error items included) belongs to shard (k mod N) + 1. Every machine
 *             must expand the same arguments from the same relative location.
 *  Videos     As Q-Align's load_video (decord): fps = avg_frame_rate num/den as a double,
 *             count = len(VideoReader) = the number of packets of the video stream (decord
 *             indexes every packet when it opens a file; src/video/video_reader.cc
 *             IndexKeyframes/GetFrameCount since v0.4.0), read here with
 *             `ffprobe -count_packets`; if that gives 0, the container's nb_frames, then
 *             decord's own fallback fps * format duration. Frames: n = int(count / fps),
 *             index_i = int(fps * i), the same double arithmetic as Python. Frames are
 *             decoded by one ffmpeg process (spawned without a shell, path passed as
 *             "file:PATH"), with -fps_mode passthrough (-vsync 0 before ffmpeg 5.1) so no
 *             frame is duplicated or dropped, converted to rgb24 by ffmpeg (as decord's
 *             filter graph does), auto-rotated like decord, and streamed as PPM: only
 *             the wanted frames leave ffmpeg (a `select` filter on the frame number), one
 *             frame is in memory at a time, and ffmpeg is stopped after the last one.
 *             The stream is the first video stream that is not cover art.
 *  Results    CSV columns / JSONL keys (always all of them, in this order):
 *               path,task,kind,frames,score,std,scale,p_excellent..p_bad,
 *               logit_excellent..logit_bad,error,model,prompt,levels,pad,precise,max_frames
 *             The last six say how the row was made (RowSetup; max_frames only on a video's
 *             row). A failed row has an empty score and probabilities (null in JSONL) and the
 *             message in error (error is empty / null on success). CSV is RFC 4180
 *             (fields with , " CR LF are quoted, quotes doubled), bytes as they are; true /
 *             false for pad and precise, as in JSON. JSONL is UTF-8; bytes of a path that are
 *             not valid UTF-8 are written as \udcXX (Python's surrogateescape:
 *             os.fsencode(json.loads(line)["path"]) gives the original bytes back). Each row
 *             is one write() on an O_APPEND descriptor, then fsync(): a killed run loses at
 *             most the row in flight.
 *  Appending  A results file is never truncated: rows are appended to what is there. An
 *             existing file must be qalign's (a CSV whose first line is this header; a JSONL
 *             with at least one row and nothing after its last newline that is not the start
 *             of a row), else it is refused untouched. A last row without its newline (the
 *             run was killed while writing it) is cut off; so is a CSV that holds nothing
 *             but the start of the header.
 *  Resume     With resume the rows already there are read. A row is reused for an input
 *             when it is the last row with the input's path, task, scale and setup (model,
 *             prompt, levels, pad, precise, and a video's max_frames), its kind is the
 *             input's, a frame set's frame count is the same, and it has no error - in every
 *             results file given. Otherwise the input is scored again: sink_resume() says
 *             whether it is new, failed before, or was scored another way (and how). A retry
 *             that fails with the same error as the row it retries adds no row. With both
 *             --csv and --jsonl, a reusable row found in one file only (killed between the
 *             two writes, or a file added later) is copied to the other, not scored again.
 *  Eval       labels CSV: path,mos (header optional: a first row whose second field is
 *             not a number; a header may name the columns, e.g. "image,score,...").
 *             A result matches a label by its path as written (after normalisation),
 *             else by the longest tail of its path that is a label's path, else by
 *             file name when that name is unique among both the labels and the results;
 *             a label claimed by several results that way is left out. SRCC = Pearson
 *             of average ranks, PLCC = Pearson of the raw scores (no logistic fit), KRCC
 *             = Kendall tau-b (O(n log n), ties handled), all in double precision.
 *             Fewer than 2 pairs or a constant side -> NaN.
 *  Report     One self-contained HTML file: JPEG thumbnails (at most 160 px, box filter,
 *             encoded here) as data: URIs, no external URL, items sorted by score
 *             (descending, then path), five probability bars each, failed items in an
 *             error table. Thumbnails are spooled to a temporary file as they come, so
 *             memory does not grow with them; the page is written to PATH.tmp then renamed
 *             over PATH (a report is replaced, not appended to). report_new() creates and
 *             removes PATH.tmp, so an unwritable place fails before anything is scored.
 *             With resume, the earlier rows made the same way are in it too.
 *
 * How cli.c uses it:
 *
 *   ItemList L = {0};
 *   inputs_expand(inputs, n_inputs, NULL, &L, err, sizeof err)      (-1: fatal)
 *   if (--shard I/N) items_shard(&L, I, N);
 *   Sink *s = sink_open(&(SinkOptions){csv, jsonl, report, labels, resume, task, scale, setup}, ...)
 *   int have_video = video_available(why, sizeof why);
 *   Progress pg;  progress_start(&pg, L.n, quiet);
 *   for each Item *it in L:
 *       if (sink_resume(s, &(ResultRow){path, kind, ...}, ...) == RESUME_DONE) { progress_skip(&pg); continue; }
 *       progress_begin_item(&pg, it->path);
 *       score it (ITEM_IMAGE, ITEM_VIDEO via video_plan/video_read) or take it->error
 *       errors: progress_note(&pg, "qalign: error: %s: %s", path, msg)
 *       results on stdout: progress_clear(&pg); print the row
 *       sink_add(s, &row, decoded_image_or_NULL, err, sizeof err)   (-1: disk full etc.: fatal)
 *       progress_update(&pg, row.error == NULL)
 *   progress_finish(&pg);  sink_finish(s, stderr, err, sizeof err);  sink_free(s);
 *   --video FRAME... / --frames DIR: one item (row.kind = "frames", row.frames = count).
 */
#ifndef QALIGN_APP_H
#define QALIGN_APP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "image.h"
#include "qalign.h"

/* ======================================================================================
 * 1. Inputs */

typedef enum {
    ITEM_IMAGE = 1, /* decodable by image_load() */
    ITEM_VIDEO = 2, /* a video container; needs ffmpeg/ffprobe */
    ITEM_ERROR = 3  /* cannot be scored; `error` says why (missing, unreadable, GIF, ...) */
} ItemKind;

typedef struct {
    char *path;         /* normalised path (malloc'ed) */
    ItemKind kind;
    const char *format; /* static name: "png" "jpeg" "bmp" "pnm" / "mp4" "mov" "mkv" "webm" "avi"
                           "mpegts" "m2ts" "flv" "mpeg" "asf" "ogg" "y4m" / "gif" ... or NULL */
    char *error;        /* ITEM_ERROR: the reason without the path (malloc'ed); else NULL */
} Item;

typedef struct {
    Item *items;        /* sorted, deduplicated */
    size_t n, cap;
    size_t n_skipped;   /* directory entries left out (not media, hidden, special files) */
    size_t n_comments;  /* @list lines skipped as comments */
    char *warning;      /* NULL, or (malloc'ed) about a comment line that names an existing file */
} ItemList;

typedef struct {
    int include_hidden; /* also walk dot-files and dot-directories */
    int natural_sort;   /* order digit runs by value (frame_2 before frame_10); for --frames */
} ExpandOptions;

/* Expand args[0..nargs) (files, directories, @lists) and append to out (which must be
 * zero-initialised or the result of an earlier call), then sort and deduplicate the whole
 * list. -1 only for what should stop the program: out of memory, an unreadable @list. */
int inputs_expand(const char *const *args, size_t nargs, const ExpandOptions *opt, ItemList *out,
                  char *err, size_t errlen);
void itemlist_free(ItemList *l);

/* Classify content. buf: the first bytes of a file (1024 are enough). Returns the kind and
 * sets *format; for ITEM_ERROR (unsupported or unknown) why gets a reason. */
ItemKind sniff_bytes(const uint8_t *buf, size_t len, const char **format, char *why, size_t whylen);
/* Classify a path (stat + first 1 KB). Never opens anything but a regular file. */
ItemKind sniff_path(const char *path, const char **format, char *why, size_t whylen);

/* Parse "I/N" (1 <= I <= N <= 1000000). */
int shard_parse(const char *s, int *index, int *count, char *err, size_t errlen);
/* Keep the items of shard `index` (1-based) of `count`: item k stays iff k % count == index-1. */
void items_shard(ItemList *l, int index, int count);

/* ======================================================================================
 * 2. Video (ffmpeg/ffprobe as external programs) */

/* ffmpeg and ffprobe are stopped (and the input fails, saying so) when they write nothing on
 * their output for this many seconds, or do not exit that long after it ended; <= 0: wait
 * forever. Default VIDEO_DEFAULT_TIMEOUT. Process-wide (the command's --ffmpeg-timeout). */
#define VIDEO_DEFAULT_TIMEOUT 600
void video_set_timeout(double seconds);

/* 1 when both ffmpeg and ffprobe are found (on PATH, or QALIGN_FFMPEG / QALIGN_FFPROBE
 * name the programs), else 0 with a reason in why. */
int video_available(char *why, size_t whylen);
/* A ready-made message for videos when ffmpeg is missing. */
const char *video_unavailable_hint(void);

typedef struct {
    int stream;             /* absolute index of the stream used (ffmpeg -map 0:stream) */
    int width, height;      /* coded size, before display rotation */
    char codec[32];         /* codec_name */
    int64_t fps_num, fps_den; /* avg_frame_rate as a rational (e.g. 30000/1001) */
    double fps;             /* (double)fps_num / fps_den: decord's get_avg_fps() */
    int64_t frame_count;    /* decord's len(VideoReader), see count_source */
    const char *count_source; /* "packets" (normal), "nb_frames" or "duration" (fallbacks) */
    int64_t nb_frames;      /* the container's nb_frames, -1 when not stated */
    double duration;        /* format duration in seconds, -1 when unknown */
} VideoInfo;

/* Run ffprobe on path. */
int video_probe(const char *path, VideoInfo *info, char *err, size_t errlen);

/* The original selection (pure): n = int(count / fps), idx[i] = int(fps * i) for i < n.
 * Writes min(n, cap) indices (idx may be NULL with cap 0) and returns n; -1 when fps is
 * not a positive finite number or count < 0. fps < 1 repeats indices, as the original. */
int64_t video_frame_indices(int64_t count, double fps, int64_t *idx, int64_t cap);
/* --max-frames: if n > max, out[j] = idx[(j * n) / max] for j < max (uniform, starts at the
 * first frame); else a copy. Returns the number written (out holds at least min(n, max)). */
int64_t video_subsample(const int64_t *idx, int64_t n, int64_t max, int64_t *out);

typedef struct {
    VideoInfo info;
    int64_t *idx;           /* the frame indices to read, non-decreasing (malloc'ed) */
    int64_t n;              /* number of frames that will be delivered */
    int64_t n_original;     /* what the original loader would take (n < n_original iff subsampled) */
    int subsampled;         /* --max-frames changed the selection: deviates from the original */
    char *path;
} VideoPlan;

/* Probe and select. max_frames <= 0: no limit (the original). n == 0 is not an error
 * here (a clip shorter than 1 s); the caller decides (the original then fails). */
int video_plan(const char *path, int64_t max_frames, VideoPlan *plan, char *err, size_t errlen);
void video_plan_free(VideoPlan *plan);

/* Called once per selected frame, in order: k = 0..n-1, index = the frame's index in the
 * video, frame = RGB24 pixels valid only during the call (do not free). Return 0 to go on,
 * non-zero to stop (then write a reason to err). */
typedef int (*VideoFrameFn)(void *user, int64_t k, int64_t index, const Image *frame, char *err,
                            size_t errlen);

typedef enum {
    VIDEO_READ_AUTO = 0,    /* select filter unless the expression would be too long */
    VIDEO_READ_SELECT = 1,  /* ffmpeg outputs only the wanted frames */
    VIDEO_READ_ALL = 2      /* ffmpeg outputs every frame, unwanted ones are skipped here */
} VideoReadMode;

/* Decode the frames idx[0..n) (non-decreasing; repeats are delivered again) of path with
 * one ffmpeg process and call fn for each. Memory: one frame. */
int video_read_frames(const char *path, const VideoInfo *info, const int64_t *idx, int64_t n,
                      VideoReadMode mode, VideoFrameFn fn, void *user, char *err, size_t errlen);
/* The -vf argument that makes ffmpeg output only frames idx[0..n) (non-decreasing):
 * select='EXPR', EXPR a balanced if(lt(n,K),..,..) tree over sums of eq(n,K), O(log n) per
 * frame. Used when it is at most 100000 characters (about 4000 frames), else every frame
 * is decoded and the unwanted ones are skipped here. Malloc'ed; NULL if out of memory. */
char *video_select_filter(const int64_t *idx, int64_t n);
/* Same for a plan. */
int video_read(const VideoPlan *plan, VideoFrameFn fn, void *user, char *err, size_t errlen);

/* ======================================================================================
 * 3. Result rows, files, resume */

#define APP_LEVELS 5
extern const char *const APP_LEVEL_NAMES[APP_LEVELS]; /* excellent good fair poor bad */
#define APP_MAX_LEVELS 16

/* How a result was made: each row records it, and --resume reuses only rows made the same
 * way. model == NULL: unknown (the six fields are written empty / null, and such a row is
 * never reused). */
typedef struct {
    const char *model;      /* qalign_describe().model_id */
    const char *prompt;     /* the prompt template (with <|image|>, {task}, {input}) */
    const char *levels;     /* "word=weight,..." */
    int pad;                /* 1: padded to a square (expand2square), 0: --no-pad */
    int precise;            /* 1: --precise */
} RowSetup;

/* One result, as every output writes it (stdout --json, --csv, --jsonl, the report): the
 * same field names everywhere. JSON: one flat object, keys in this order
 *   path task kind frames score std scale p_<word>... logit_<word>... error
 *   model prompt levels pad precise max_frames
 * (score, std, p_*, logit_* null and error a string on a failed row); CSV: the same columns,
 * for the five default level words. */
typedef struct {
    const char *path;
    const char *task;       /* "quality" or "aesthetics" */
    const char *kind;       /* "image", "video", "frames" (a --video/--frames set) or NULL */
    int frames;             /* frames scored: 1 for an image, n for a video, 0 on error */
    double score;           /* on `scale` */
    double std;             /* the spread of the level distribution, on `scale` */
    const char *scale;      /* "1-5" or "0-1" */
    double probs[APP_MAX_LEVELS]; /* per level word: excellent, good, fair, poor, bad by default */
    const char *error;      /* NULL (or "") on success; else why it failed (score unused) */
    double logits[APP_MAX_LEVELS]; /* per level word; NaN where unknown */
    int n_levels;           /* 0: the five default words (APP_LEVEL_NAMES) */
    const char *const *levels; /* else the words (JSON only: result files take the default five) */
    /* JSON only, and only when set (other rows are unchanged): */
    int per_frame;          /* 1: the row of one frame of a video (--per-frame): "frame": k after "frames" */
    int frame;              /* that frame, from 0 */
    int n_anchors;          /* > 0: a comparison scorer's row (Compare2Score): "anchor_prefs": [the
                               image's preference over each anchor] before "error" */
    const float *anchor_prefs;
    RowSetup setup;         /* what made it */
    int max_frames;         /* a video's --max-frames (0: none, and on other rows) */
    /* an answer (--ask): question != NULL. JSON: "question", "answer", "tokens", "finish" before
       "error" and "decoding" before "pad"; the score's keys (task, score, std, scale, p_*, logit_*,
       levels) only when scored (--ask with --score). Resume compares question and decoding too. */
    const char *question;
    const char *answer;     /* the decoded text (NULL on a failed row) */
    const int *tokens;      /* (n_tokens) the generated ids, EOS not included */
    int n_tokens;
    const char *finish;     /* "eos", "stop", "length" */
    const char *decoding;   /* how it was generated, e.g. "greedy max_tokens=256" */
    int scored;             /* 1: the score's fields are set too */
} ResultRow;

/* RESULTS_CSV_ANSWERS: the CSV of --ask, its own header (ANSWER columns, app.c) */
typedef enum { RESULTS_CSV = 0, RESULTS_JSONL = 1, RESULTS_CSV_ANSWERS = 2 } ResultsFormat;

/* Rows read back from a results file. Strings are owned by the set. */
typedef struct RowSet RowSet;
RowSet *rowset_new(void);
void rowset_free(RowSet *s);
size_t rowset_count(const RowSet *s);              /* rows, in file order */
const ResultRow *rowset_row(const RowSet *s, size_t i);
/* The last row for (path, task), whatever made it, or NULL. */
const ResultRow *rowset_find(const RowSet *s, const char *path, const char *task);
/* The last row with like's path, task, scale, setup and max_frames, or NULL. */
const ResultRow *rowset_find_like(const RowSet *s, const ResultRow *like);
/* 1 iff that row exists, has no error, and has like's kind (and frame count if "frames"). */
int rowset_done_like(const RowSet *s, const ResultRow *like);
/* Add a copy of a row (used by the readers; handy for tests). */
int rowset_add(RowSet *s, const ResultRow *row);

typedef struct ResultsFile ResultsFile;

/* Open a results file for appending (created if missing; see "Appending" above). The rows
 * already there go into previous (may be NULL: checked, not kept). *dropped (may be NULL)
 * gets the number of bytes of a torn last row that were cut. */
ResultsFile *results_open(const char *path, ResultsFormat fmt, RowSet *previous, size_t *dropped, char *err,
                          size_t errlen);
/* Append one row, one write() + fsync(). */
int results_write(ResultsFile *f, const ResultRow *row, char *err, size_t errlen);
int results_close(ResultsFile *f, char *err, size_t errlen);
/* Read a results file without opening it for writing (missing file = 0 rows). *torn: 1 if
 * the last row was incomplete. Rows that do not parse are skipped and counted in *bad. */
int results_read(const char *path, ResultsFormat fmt, RowSet *into, int *torn, size_t *bad,
                 char *err, size_t errlen);
/* The same on bytes in memory (the fuzz harness's entry): -1 for a file that is not a
 * results file of this format (reason in err) or out of memory. */
int results_parse(const char *data, size_t len, ResultsFormat fmt, RowSet *into, int *torn, size_t *bad,
                  char *err, size_t errlen);
/* Format one row (no file): CSV line or JSON line, with its '\n'. Returns malloc'ed text. */
char *results_format_row(ResultsFormat fmt, const ResultRow *row);
const char *results_csv_header(void); /* with its '\n' */
const char *results_answer_csv_header(void); /* RESULTS_CSV_ANSWERS's, with its '\n' */
/* s as a JSON string literal (quotes included), escaped as every row is: bytes that are not
 * UTF-8 become \udcXX (Python's surrogateescape). Malloc'ed; NULL if out of memory. */
char *json_quoted(const char *s);

/* How a run makes rows of its results: cli.c (stdout, result files) and serve.c (the
 * server's answers) both use it, so the server answers with the --json line's fields and
 * digits. Initialise it with the context's levels and score range (qalign_ctx_levels; 0-100
 * for a comparison scorer). */
typedef struct {
    const char *task;
    float lo, hi;           /* the score's own range: the smallest and largest level weight */
    int mapped;             /* --scale given: score and std mapped linearly from [lo, hi] */
    double to_lo, to_hi;    /* onto [to_lo, to_hi] */
    char scale[64];         /* "1-5", "0-1", "0-100" (--scale), or the own range ("1-5" by default) */
    int n_levels;
    const char *words[APP_MAX_LEVELS]; /* the level words (the context's strings) */
    RowSetup setup;         /* what makes the rows (every row records it; model NULL: unknown) */
} RowStyle;
/* scale: "1-5", "0-1", "0-100", or NULL for the score's own range. -1 (nothing set) for
 * another string. */
int row_style_init(RowStyle *s, const char *task, const char *scale, int n_levels, const char *const *words, float lo,
                   float hi);
/* The row of a result r, or (error != NULL) of an input that failed (r unused). The row
 * points into s, path, kind and error. */
ResultRow row_from_result(const RowStyle *s, const char *path, const char *kind, const qalign_result *r,
                          const char *error);
/* The setup of a context's rows: the model's id (qalign_describe), the context's prompt
 * template and levels (qalign_ctx_describe), each one line (backslash, newline, CR, tab written as \\ \n \r \t,
 * so a CSV row stays one line and the text is exact), pad, precise. Strings malloc'ed (free
 * with row_setup_free); -1: out of memory. */
int row_setup_make(RowSetup *su, const char *model_id, const qalign_ctx_info *ci);
void row_setup_free(RowSetup *su);
/* The same from an opened model and a context (in the header, so that app.c needs nothing
 * of the library). */
static inline int row_setup_of(RowSetup *su, const qalign_model *m, const qalign_ctx *c) {
    qalign_info mi;
    qalign_ctx_info ci;
    qalign_describe(m, &mi);
    qalign_ctx_describe(c, &ci);
    return row_setup_make(su, mi.model_id, &ci);
}

/* ======================================================================================
 * 4. Evaluation */

/* NaN when n < 2 or one side is constant. */
double stats_plcc(const double *x, const double *y, size_t n);
double stats_srcc(const double *x, const double *y, size_t n);
double stats_krcc(const double *x, const double *y, size_t n); /* Kendall tau-b */
/* Average ranks (1-based; ties share their mean rank). */
int stats_rank(const double *x, size_t n, double *rank);

typedef struct Labels Labels;
Labels *labels_load(const char *path, char *err, size_t errlen);
void labels_free(Labels *l);
size_t labels_count(const Labels *l);
/* Lines that were left out (no path, or a MOS that is not a finite number); why gets the
 * first of them ("line 3: MOS 'good' is not a number"). */
size_t labels_skipped(const Labels *l, char *why, size_t whylen);

typedef struct {
    size_t n_results;       /* results offered (successful rows) */
    size_t n_labels;        /* labels in the file */
    size_t matched;         /* = by_path + by_suffix + by_name */
    size_t by_path;         /* the result's path is a label's path */
    size_t by_suffix;       /* a label's path is a tail of it at a '/' (label jp2k/img1.bmp,
                               result /data/live/jp2k/img1.bmp); the longest such tail */
    size_t by_name;         /* same file name, unique among the labels and among the results */
    size_t ambiguous;       /* left out: several labels or several results could pair up */
    double srcc, plcc, krcc;/* NaN when undefined */
} EvalResult;

/* Match results (path, score) to labels and compute the three coefficients. */
int eval_run(const Labels *l, const char *const *paths, const double *scores, size_t n,
             EvalResult *out, char *err, size_t errlen);
/* Two lines for a human, e.g. "eval: 98 of 100 results matched labels (…)\n
 * eval: SRCC 0.8123  PLCC 0.8345  KRCC 0.6234  (n = 98)". */
void eval_print(FILE *f, const EvalResult *r, const char *labels_path);

/* ======================================================================================
 * 5. Thumbnails and the HTML report */

/* Downscale so the long side is at most max_side (never upscales), area-average filter. */
int thumb_downscale(const Image *in, int max_side, Image *out, char *err, size_t errlen);
/* Baseline JFIF, 4:4:4, standard Huffman tables, IJG quality scaling (1..100). */
int jpeg_encode(const Image *img, int quality, uint8_t **out, size_t *len, char *err, size_t errlen);
/* Base64 (RFC 4648, padded); returns a malloc'ed NUL-terminated string. */
char *base64_encode(const uint8_t *data, size_t len);

typedef struct Report Report;
/* Start a report that will be written to path. */
Report *report_new(const char *path, const char *title, char *err, size_t errlen);
/* Add an item. img: the decoded picture (for a video, a frame) to make the thumbnail from,
 * or NULL: then an image row's file is decoded for its thumbnail when the page is written
 * (and a placeholder shown if that fails or it is not an image). */
int report_add(Report *r, const ResultRow *row, const Image *img, char *err, size_t errlen);
/* Write (or rewrite) the page; `summary` is a line of plain text shown under the title
 * (may be NULL). Can be called more than once (e.g. periodically). */
int report_write(Report *r, const char *summary, char *err, size_t errlen);
void report_free(Report *r);

/* ======================================================================================
 * 6. Progress line (stderr) */

typedef struct {
    int enabled;            /* stderr is a terminal and not quiet */
    size_t total;           /* items in the run */
    size_t done;            /* items finished, skipped ones included */
    size_t failed;          /* of those, failed */
    size_t skipped;         /* of those, skipped (already done); not counted in the rate */
    double t0;              /* start (monotonic seconds) */
    double last_draw;       /* when the line was last drawn (redraws are throttled) */
    double busy_t0;         /* when the current item started */
    size_t drawn_len;       /* length of the line on screen, 0 if none */
    char current[96];       /* file name of the current item */
} Progress;

/* total: items in the run. Enabled only if isatty(2) and !quiet (QALIGN_PROGRESS=1 forces it
 * on, for tests). */
void progress_start(Progress *p, size_t total, int quiet);
/* The item about to be processed (shown on the line). */
void progress_begin_item(Progress *p, const char *path);
/* One item finished (ok = 0 if it failed). Redraws at most 10 times a second. */
void progress_update(Progress *p, int ok);
/* One item skipped (already done in the results file); it does not count in the rate. */
void progress_skip(Progress *p);
/* Print a message line on stderr without garbling the progress line. */
void progress_note(Progress *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Erase the progress line (call before printing a result line on stdout when stdout and
 * stderr may be the same terminal); the next update draws it again. */
void progress_clear(Progress *p);
/* Final line (when enabled): totals and elapsed time. */
void progress_finish(Progress *p);
/* "12.3 s", "4 min 05 s", "1 h 02 min" */
void format_duration(double seconds, char *buf, size_t len);

/* ======================================================================================
 * 7. Sink: everything a result goes to, in one object */

typedef struct {
    const char *csv_path;    /* --csv FILE, or NULL */
    const char *jsonl_path;  /* --jsonl FILE, or NULL */
    const char *report_path; /* --report FILE, or NULL */
    const char *labels_path; /* --eval FILE, or NULL */
    int resume;              /* --resume (needs csv_path or jsonl_path) */
    const char *task;        /* "quality" / "aesthetics": resume and eval use rows of this task */
    const char *scale;       /* "1-5" / "0-1": shown in the report; resume compares it */
    const char *title;       /* report title (NULL: "qalign <task>") */
    RowSetup setup;          /* what makes this run's rows (rows added without one get it) */
    int max_frames;          /* --max-frames: videos' rows get it */
    int answers;             /* --ask: the rows are answers (the CSV has the answer columns) */
    const char *question;    /* --ask: the question and how answers are made (resume compares them) */
    const char *decoding;
} SinkOptions;               /* strings are copied, except labels_path: keep it until sink_finish */

typedef struct Sink Sink;
/* Open the files (appending) and load the labels; with resume, read the rows already written. */
Sink *sink_open(const SinkOptions *o, char *err, size_t errlen);

typedef enum {
    RESUME_NEW = 0,     /* no row for this path and task (or not resuming) */
    RESUME_DONE = 1,    /* a reusable row: skip the input */
    RESUME_FAILED = 2,  /* the last row made this way is an error: retry */
    RESUME_CHANGED = 3  /* rows made another way only (why says how) */
} ResumeState;
/* What --resume does with an input: like gives its path, kind ("image", "video", "frames",
 * NULL for an input that cannot be read) and, for "frames", the frame count; task, scale,
 * setup and max_frames are the sink's. why (may be NULL) gets, for RESUME_CHANGED, the
 * first difference as one word: "model", "prompt", "levels", "pad", "precise", "scale",
 * "max_frames", "kind" or "frames"; for RESUME_FAILED "failed". */
ResumeState sink_resume(const Sink *s, const ResultRow *like, char *why, size_t whylen);
/* Rows that failed in this run (for the exit status). */
size_t sink_failures(const Sink *s);
/* Record one result: results files, report (thumbnail from img if given), eval. A row with
 * task, scale or setup.model NULL gets the sink's. -1 means a results file could not be
 * written (disk full...): stop the run, the files hold everything up to the previous row. */
int sink_add(Sink *s, const ResultRow *row, const Image *img, char *err, size_t errlen);
/* End of run: add the earlier rows made the same way (resume) to eval and report, write the
 * report, print the eval summary to msg (if labels were given; msg may be NULL), close files. */
int sink_finish(Sink *s, FILE *msg, char *err, size_t errlen);
/* The evaluation computed by sink_finish (0 if there was none). */
int sink_eval(const Sink *s, EvalResult *out);
void sink_free(Sink *s);

#endif
