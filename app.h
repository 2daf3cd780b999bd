/* app.h - the batch side of qalign: inputs, videos through ffmpeg, result files with
 * resume, evaluation against labels, an HTML gallery and a progress line.
 *
 * Everything here is independent of the model: cli.c scores, the files below do
 * the rest. Library conventions as in image.h: functions return 0 (or a count) on
 * success and -1 on failure with a one-line reason in err[0..errlen); nothing here
 * exits or aborts, and nothing prints except the progress functions and
 * sink_finish(), which print to the FILE/stream they are documented to use.
 *
 * The batch side is cut by concern, one header and one source file each:
 *   inputs.h    files, directories, @lists, shards            (inputs.c)
 *   video.h     ffmpeg / ffprobe, frame choice, reading frames (video.c)
 *   results.h   result rows, CSV / JSONL writers and readers, resume look-ups (results.c)
 *   evaluate.h  SRCC / PLCC / KRCC, labels, matching          (evaluate.c)
 *   report.h    the HTML gallery                               (report.c)
 *   progress.h  the progress line                              (progress.c)
 *   sink.h      results files + report + evaluation in one object (sink.c)
 * and the helpers they share, app_util.h (app_util.c). The JPEG encoder and the thumbnail
 * resampler of the report are the image library's (image.h). The decisions each part
 * makes are written in its header; tests/test_app.py checks each of them.
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

#include "evaluate.h"
#include "inputs.h"
#include "progress.h"
#include "report.h"
#include "results.h"
#include "sink.h"
#include "video.h"

#endif
