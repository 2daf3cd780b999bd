#!/usr/bin/env bash
# run.sh - from nothing to scores in one command.
#
#   ./run.sh photo.jpg [more images...]          download one-align once, export, score
#   ./run.sh --model DIR photo.jpg               use a local Hugging Face checkpoint instead
#   ./run.sh --dtype bf16 -t aesthetics a.jpg    any qalign option is passed through
#   ./run.sh --preset deqa photo.jpg             another scorer of the family: its checkpoint
#   ./run.sh --preset compare2score photo.jpg    (and Compare2Score's anchor images)
#   ./run.sh --preset q-realign-mini photo.jpg   Q-ReAlign (Qwen3.5): Mini 0.8B (also -lite, -pro)
#
# Builds ./qalign if needed; downloads the preset's checkpoint (q-future/one-align by default,
# about 16.4 GB, resumable, sizes checked) into $QALIGN_CACHE (default ~/.cache/qalign);
# exports it once to $QALIGN_CACHE/<checkpoint folder>-<id>-<dtype>.qalign, where <id>
# identifies the checkpoint (its files' names, sizes and times, and its JSON files): a changed
# or another checkpoint is exported anew, never mistaken for the cached one; later runs go
# straight to scoring.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${QALIGN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qalign}"
hf="${QALIGN_HF_URL:-https://huggingface.co}"
dtype="q8_0"
model_dir=""
preset=""
anchors=""
args=()

die() { echo "run.sh: error: $*" >&2; exit 1; }
say() { echo "run.sh: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --model) [ $# -ge 2 ] || die "--model needs a directory"; model_dir="$2"; shift 2 ;;
        --dtype) [ $# -ge 2 ] || die "--dtype needs a value"; dtype="$2"; shift 2 ;;
        --cache) [ $# -ge 2 ] || die "--cache needs a directory"; cache="$2"; shift 2 ;;
        --preset) [ $# -ge 2 ] || die "--preset needs a name"; preset="$2"; args+=("$1" "$2"); shift 2 ;;
        --anchors) [ $# -ge 2 ] || die "--anchors needs a directory"; anchors="$2"; args+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
# q8 and q4 name the fastest 8-bit and 4-bit types (export.py ALIASES); the cache file is
# named after the type itself
case "$dtype" in q8) dtype="q8_256" ;; q4) dtype="q4_256" ;; esac
case "$dtype" in f32|bf16|q8_0|q4_1|q8_256|q4_256) ;; *) die "--dtype must be f32, bf16, q8, q4, q8_0, q4_1, q8_256 or q4_256" ;; esac
[ ${#args[@]} -gt 0 ] || die "no images given (try --help)"
# the checkpoint of each preset (QALIGN_REPO or --model choose another)
case "$preset" in
    ""|one-align) default_repo=q-future/one-align ;;
    deqa) default_repo=zhiyuanyou/DeQA-Score-Mix3 ;;
    q-instruct|q-instruct-boost) default_repo=q-future/q-instruct-mplug-owl2 ;;
    compare2score) default_repo=q-future/Compare2Score ;;
    q-align) default_repo="" ;;
    # Q-ReAlign (Qwen3.5); q-realign-swift is a prompt form, scored on Mini unless QALIGN_REPO says
    q-realign-mini|q-realign-swift) default_repo=q-future/Q-ReAlign-Mini-0.8B ;;
    q-realign-lite) default_repo=q-future/Q-ReAlign-Lite-4B ;;
    q-realign-pro) default_repo=q-future/Q-ReAlign-Pro-9B ;;
    *) die "unknown --preset '$preset' (qalign --help lists them)" ;;
esac
repo="${QALIGN_REPO:-$default_repo}"
[ -n "$repo" ] || [ -n "$model_dir" ] || die "--preset q-align: which of Q-Align's checkpoints? set QALIGN_REPO=q-future/q-align-iqa (or -quality, -image, -iaa-vqa, -aesthetic, -vqa), or give --model DIR"
base="$hf/$repo/resolve/main"

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
    # remote size of a file (Hugging Face answers HEAD with the size of the LFS object); fails
    # (with curl's reason on stderr) when the server cannot be reached or has no such file
    remote_size() {
        local head
        head="$(curl -fsSIL --connect-timeout 20 --max-time 120 "$base/$1")" || return 1
        printf '%s\n' "$head" | tr -d '\r' |
            awk 'tolower($1)=="x-linked-size:"{s=$2} tolower($1)=="content-length:"{c=$2} END{print (s!=""?s:c)}'
    }
    fetch() {
        local f="$1" want have
        want="$(remote_size "$f" 2>&1)" ||
            die "cannot get $f from $base: ${want:-no answer} (no network? or give --model DIR with a local checkpoint)"
        have="$(stat -c %s "$model_dir/$f" 2>/dev/null || echo 0)"
        if [ -n "$want" ] && [ "$have" = "$want" ]; then return 0; fi
        # longer than the remote file: not a partial download of it, start again
        if [ -n "$want" ] && [ "$have" -gt "$want" ]; then rm -f "$model_dir/$f"; fi
        say "downloading $f${want:+ ($((want / 1000000)) MB)}"
        curl -fL --retry 5 -C - -o "$model_dir/$f" "$base/$f" || die "download of $f failed (run again to resume)"
        have="$(stat -c %s "$model_dir/$f")"
        [ -z "$want" ] || [ "$have" = "$want" ] || die "$f: got $have bytes, expected $want (run again to resume)"
    }
    # whether the server has a file a checkpoint may or may not have: yes, no (HTTP 404), or
    # an error (no answer, another status), not taken for a no
    remote_has() {
        local code
        [ -s "$model_dir/$1" ] && return 0
        code="$(curl -sIL -o /dev/null -w '%{http_code}' --connect-timeout 20 --max-time 120 "$base/$1")" ||
            die "cannot ask $base for $1 (no network? or give --model DIR with a local checkpoint)"
        case "$code" in 2??) return 0 ;; 404) return 1 ;; *) die "cannot ask $base for $1: HTTP $code" ;; esac
    }
    fetch config.json
    # (a config.json that does not parse is export.py's to report)
    family="$($py -c 'import json,sys; print(json.load(open(sys.argv[1])).get("model_type", ""))' \
                "$model_dir/config.json" 2>/dev/null)" || family=""
    index=""
    if [ "$family" = qwen3_5 ]; then
        # Qwen3.5 (Q-ReAlign): the byte-level BPE tokenizer; the image processor's settings
        # (preprocessor_config.json, or processor_config.json as transformers 5 saves them) and
        # the chat template as its own file, where the repository has them; the weights as
        # model.safetensors, or as shards named by model.safetensors.index.json
        for f in tokenizer.json tokenizer_config.json; do fetch "$f"; done
        for f in preprocessor_config.json processor_config.json chat_template.jinja; do
            if remote_has "$f"; then fetch "$f"; fi
        done
        if remote_has model.safetensors.index.json; then index=model.safetensors.index.json; else shards=model.safetensors; fi
    else
        for f in preprocessor_config.json tokenizer.model; do fetch "$f"; done
        index=pytorch_model.bin.index.json  # (or the safetensors index, for repositories that have that)
        if [ ! -s "$model_dir/$index" ] && ! curl -sfIL "$base/$index" >/dev/null; then index=model.safetensors.index.json; fi
    fi
    if [ -n "$index" ]; then
        fetch "$index"
        shards="$($py -c 'import json,sys; print(" ".join(sorted(set(json.load(open(sys.argv[1]))["weight_map"].values()))))' \
                   "$model_dir/$index" 2>&1)" || die "$model_dir/$index: ${shards##*$'\n'}"
    fi
    for f in $shards; do fetch "$f"; done
fi

# 2b. Compare2Score's anchors: the images of the Hugging Face dataset VQA-CityU/Anchor_images
# (its 'train' split, in order) into $cache/anchors/anchor_<k>.<ext>. The dataset's files are
# listed by the Hub's API: image files are fetched as they are; a dataset stored as parquet
# needs Python's pyarrow to take the images out (both unverified: no network where this was
# written; the test serves image files).
if [ "$preset" = compare2score ] && [ -z "$anchors" ]; then
    anchors="$cache/anchors"
    ds="${QALIGN_ANCHORS:-VQA-CityU/Anchor_images}"
    if [ "$(ls "$anchors" 2>/dev/null | grep -c '^anchor_')" != 5 ]; then
        command -v curl >/dev/null || die "curl is needed to download $ds (or give --anchors DIR)"
        mkdir -p "$anchors"
        listing="$(curl -fsL "$hf/api/datasets/$ds/tree/main?recursive=true")" || die "cannot list the dataset $ds (give --anchors DIR: its 5 images, in the dataset's order)"
        say "downloading the anchor images of $ds"
        $py - "$listing" "$hf/datasets/$ds/resolve/main" "$anchors" <<'PY' || die "the anchors of $ds could not be fetched (give --anchors DIR: its 5 images, in the dataset's order)"
import json, os, subprocess, sys
listing, base, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
files = sorted(x["path"] for x in listing if x.get("type") == "file")
images = [f for f in files if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp"))]
parquet = [f for f in files if f.endswith(".parquet")]
def get(path, dest):
    subprocess.run(["curl", "-fsL", "--retry", "3", "-o", dest, f"{base}/{path}"], check=True)
if images:          # an image folder: load_dataset takes the files in sorted order
    for k, f in enumerate(images):
        get(f, os.path.join(out, f"anchor_{k}" + os.path.splitext(f)[1].lower()))
elif parquet:       # rows in file order, column 'image' = {bytes, path}
    try:
        import pyarrow.parquet as pq
    except ImportError:
        sys.exit("the dataset is stored as parquet: python3 -m pip install pyarrow, then run again")
    k = 0
    for f in parquet:
        get(f, os.path.join(out, "part.parquet"))
        for row in pq.read_table(os.path.join(out, "part.parquet")).column("image").to_pylist():
            data = row["bytes"]
            ext = ".png" if data[:4] == b"\x89PNG" else ".jpg" if data[:2] == b"\xff\xd8" else ".bmp"
            with open(os.path.join(out, f"anchor_{k}{ext}"), "wb") as fh:
                fh.write(data)
            k += 1
        os.remove(os.path.join(out, "part.parquet"))
else:
    sys.exit("no images or parquet files in the dataset")
PY
    fi
    args+=(--anchors "$anchors")
fi
[ -d "$model_dir" ] || die "$model_dir: not a directory"

# 3. export once per checkpoint: the cached file's name carries the checkpoint's identity
id="$($py - "$model_dir" 2>&1 <<'EOF'
import hashlib, os, sys
d, h = sys.argv[1], hashlib.sha256()
for name in sorted(os.listdir(d)):
    p = os.path.join(d, name)
    if not os.path.isfile(p):
        continue
    st = os.stat(p)
    h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    if name.endswith(".json") and st.st_size < 1 << 24:
        with open(p, "rb") as f:
            h.update(f.read())
print(h.hexdigest()[:12])
EOF
)" || die "cannot read $model_dir: ${id##*$'\n'}"
out="$cache/$(basename "$model_dir")-$id-$dtype.qalign"
# (re-exported when missing, or when this qalign cannot read it, e.g. after a format change)
if ! "$here/qalign" --info "$out" >/dev/null 2>&1; then
    mkdir -p "$cache"
    say "exporting $model_dir -> $out ($dtype)"
    $py "$here/export.py" "$model_dir" "$out" --dtype "$dtype" || die "export failed"
    # once, after the export: every tensor against the checksum export.py wrote
    "$here/qalign" --verify "$out" >&2 || { rm -f "$out"; die "the new export $out is damaged (removed): run again"; }
fi

# 4. score
exec "$here/qalign" "$out" "${args[@]}"
