/* inputs.h - what a run scores: files, directories and @lists expanded into a sorted list
 * of items (images, videos, error items), and shards of it. Conventions as in app.h.
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
 */
#ifndef QALIGN_INPUTS_H
#define QALIGN_INPUTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "image.h"

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

#endif
