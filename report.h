/* report.h - the HTML gallery of a run: one self-contained page with thumbnails, scores and
 * the failed items. Conventions as in app.h.
 *
 *  Report     One self-contained HTML file: JPEG thumbnails (at most 160 px, box filter,
 *             encoded here) as data: URIs, no external URL, items sorted by score
 *             (descending, then path), five probability bars each, failed items in an
 *             error table. Thumbnails are spooled to a temporary file as they come, so
 *             memory does not grow with them; the page is written to PATH.tmp then renamed
 *             over PATH (a report is replaced, not appended to). report_new() creates and
 *             removes PATH.tmp, so an unwritable place fails before anything is scored.
 *             With resume, the earlier rows made the same way are in it too.
 */
#ifndef QALIGN_REPORT_H
#define QALIGN_REPORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "image.h"
#include "results.h"

/* ======================================================================================
 * The HTML report (its thumbnails: thumb_downscale and jpeg_encode in image.h) */

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

#endif
