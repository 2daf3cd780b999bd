#!/usr/bin/env bash
# run.sh - from nothing to scores in one command.
#
#   ./run.sh photo.jpg [more images...]          download one-align once, export, score
#   ./run.sh --model DIR photo.jpg               use a local Hugging Face checkpoint instead
#   ./run.sh --dtype bf16 -t aesthetics a.jpg    any qalign option is passed through
#
# Builds ./qalign if needed; downloads q-future/one-align (about 16.4 GB, resumable, sizes
# checked) into $QALIGN_CACHE (default ~/.cache/qalign); exports it once to
# $QALIGN_CACHE/one-align-<dtype>.qalign; later runs go straight to scoring.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${QALIGN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qalign}"
repo="${QALIGN_REPO:-q-future/one-align}"
base="${QALIGN_HF_URL:-https://huggingface.co}/$repo/resolve/main"
dtype="q8_0"
model_dir=""
args=()

die() { echo "run.sh: error: $*" >&2; exit 1; }
say() { echo "run.sh: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --model) [ $# -ge 2 ] || die "--model needs a directory"; model_dir="$2"; shift 2 ;;
        --dtype) [ $# -ge 2 ] || die "--dtype needs a value"; dtype="$2"; shift 2 ;;
        --cache) [ $# -ge 2 ] || die "--cache needs a directory"; cache="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
# q8 and q4 name the fastest 8-bit and 4-bit types (export.py ALIASES); the cache file is
# named after the type itself
case "$dtype" in q8) dtype="q8_256" ;; q4) dtype="q4_256" ;; esac
case "$dtype" in f32|bf16|q8_0|q4_1|q8_256|q4_256) ;; *) die "--dtype must be f32, bf16, q8, q4, q8_0, q4_1, q8_256 or q4_256" ;; esac
[ ${#args[@]} -gt 0 ] || die "no images given (try --help)"

py=python3
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import numpy' 2>/dev/null && py=/usr/bin/python3
$py -c 'import numpy' 2>/dev/null || die "export.py needs Python 3 with numpy (Debian: apt-get install python3-numpy)"

# 1. build
if [ ! -x "$here/qalign" ] || [ "$here/qalign.c" -nt "$here/qalign" ]; then
    say "building qalign"
    make -C "$here" -s qalign >&2 || die "build failed"
fi

# 2. checkpoint
if [ -z "$model_dir" ]; then
    command -v curl >/dev/null || die "curl is needed to download $repo (or give --model DIR)"
    model_dir="$cache/$(basename "$repo")"
    mkdir -p "$model_dir"
    # remote size of a file (Hugging Face answers HEAD with the size of the LFS object)
    remote_size() {
        curl -sIL "$base/$1" | tr -d '\r' | awk 'tolower($1)=="x-linked-size:"{s=$2} tolower($1)=="content-length:"{c=$2} END{print (s!=""?s:c)}'
    }
    fetch() {
        local f="$1" want have
        want="$(remote_size "$f")"
        have="$(stat -c %s "$model_dir/$f" 2>/dev/null || echo 0)"
        if [ -n "$want" ] && [ "$have" = "$want" ]; then return 0; fi
        # longer than the remote file: not a partial download of it, start again
        if [ -n "$want" ] && [ "$have" -gt "$want" ]; then rm -f "$model_dir/$f"; fi
        say "downloading $f${want:+ ($((want / 1000000)) MB)}"
        curl -fL --retry 5 -C - -o "$model_dir/$f" "$base/$f" || die "download of $f failed (run again to resume)"
        have="$(stat -c %s "$model_dir/$f")"
        [ -z "$want" ] || [ "$have" = "$want" ] || die "$f: got $have bytes, expected $want (run again to resume)"
    }
    for f in config.json preprocessor_config.json tokenizer.model pytorch_model.bin.index.json; do fetch "$f"; done
    for f in $($py -c 'import json,sys; print(" ".join(sorted(set(json.load(open(sys.argv[1]))["weight_map"].values()))))' \
               "$model_dir/pytorch_model.bin.index.json"); do
        fetch "$f"
    done
fi
[ -d "$model_dir" ] || die "$model_dir: not a directory"

# 3. export once
out="$cache/$(basename "$model_dir")-$dtype.qalign"
# (re-exported when missing, or when this qalign cannot read it, e.g. after a format change)
if ! "$here/qalign" --info "$out" >/dev/null 2>&1; then
    mkdir -p "$cache"
    say "exporting $model_dir -> $out ($dtype)"
    $py "$here/export.py" "$model_dir" "$out" --dtype "$dtype" || die "export failed"
fi

# 4. score
exec "$here/qalign" "$out" "${args[@]}"
