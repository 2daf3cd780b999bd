/* video.h - videos through ffmpeg/ffprobe: whether they are there, a video's frame rate and
 * count, Q-Align's choice of frames, and reading those frames. Conventions as in app.h.
 *
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
 */
#ifndef QALIGN_VIDEO_H
#define QALIGN_VIDEO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "image.h"

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

#endif
