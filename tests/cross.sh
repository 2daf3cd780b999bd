#!/usr/bin/env bash
# cross.sh TARGET [PYTEST ARGS...] - the test suite for another CPU, under qemu-user.
#
# Copies the sources to build/cross/TARGET/tree, puts a `cc` first on PATH that is the
# target's cross compiler (with its -march flags), and runs `make test` there: qalign, the
# C test drivers and every program the tests compile themselves are built for TARGET, and
# tests/conftest.py starts each of them through QALIGN_RUNNER (qemu-user). Python, the
# reference oracles and the fixtures stay native. With PYTEST ARGS (e.g. tests/test_kernels.py)
# only those are run; `quick` is the selection CI runs (below). `make test-TARGET` calls
# this; PORTING.md describes the targets.
#
#   aarch64         NEON + sdot (-march=armv8.2-a+dotprod) on a Neoverse-N1
#   aarch64-nodot   NEON without the dot-product extension, on a Cortex-A72 (which has
#                   none: an sdot would be an illegal instruction)
#   aarch64-scalar  -DQA_SCALAR: the reference kernels on AArch64
#   riscv64         rv64gc, the scalar kernels
#   armhf           32-bit ARM (hard float), the scalar kernels: a 32-bit address space
set -euo pipefail
lacking=""
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-}"
[ $# -gt 0 ] && shift

case "$target" in
    aarch64)        cc="aarch64-linux-gnu-gcc -march=armv8.2-a+dotprod"
                    qemu="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu neoverse-n1"; kernels="neon neon-dotprod"
                    lacking="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a72" ;;
    aarch64-nodot)  cc="aarch64-linux-gnu-gcc -march=armv8-a"
                    qemu="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a72"; kernels="neon" ;;
    aarch64-scalar) cc="aarch64-linux-gnu-gcc -march=armv8-a -DQA_SCALAR"
                    qemu="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a72"; kernels="none" ;;
    riscv64)        cc="riscv64-linux-gnu-gcc -march=rv64gc"
                    qemu="qemu-riscv64 -L /usr/riscv64-linux-gnu"; kernels="none" ;;
    armhf)          cc="arm-linux-gnueabihf-gcc -D_FILE_OFFSET_BITS=64"
                    qemu="qemu-arm -L /usr/arm-linux-gnueabihf"; kernels="none" ;;
    *) echo "usage: tests/cross.sh aarch64|aarch64-nodot|aarch64-scalar|riscv64|armhf [quick | pytest args]" >&2; exit 2 ;;
esac
for tool in ${cc%% *} ${qemu%% *}; do
    command -v "$tool" >/dev/null || { echo "cross.sh: $tool not found (Debian: see .ci/run for the packages)" >&2; exit 1; }
done

dir="$root/build/cross/$target"
tree="$dir/tree"
mkdir -p "$dir/bin"
# the compiler: `cc` for the Makefile and for the tests' own builds (other flags than last
# time: nothing built before is kept)
wrapper="$(printf '#!/bin/sh\nexec %s "$@"' "$cc")"
if [ "$(cat "$dir/bin/cc" 2>/dev/null)" != "$wrapper" ]; then
    rm -rf "$tree"
    printf '%s\n' "$wrapper" > "$dir/bin/cc"
    chmod +x "$dir/bin/cc"
fi
mkdir -p "$tree"
# a fresh copy of the sources (the tree's build products are kept: make rebuilds what changed)
find "$tree" -mindepth 1 -maxdepth 1 ! -name build ! -name qalign -exec rm -rf {} +
tar -C "$root" --exclude=./build --exclude=./.git --exclude=./qalign --exclude=./qalign-san -cf - . | tar -C "$tree" -xf -

# the archiver for libqalign.a: the cross binutils' (aarch64-linux-gnu-gcc -> aarch64-linux-gnu-ar)
ar="${cc%%-gcc*}-ar"
command -v "$ar" >/dev/null || { echo "cross.sh: $ar not found" >&2; exit 1; }

py="${PYTHON:-$(test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)}"
export PATH="$dir/bin:$PATH" CC=cc AR="$ar" SCALAR=1 PYTHON="$py"
export QALIGN_RUNNER="$qemu" QALIGN_TARGET="$target" QALIGN_EXPECT_KERNELS="$kernels" QALIGN_RUNNER_LACKING="$lacking"
export QALIGN_SHARED="${QALIGN_SHARED:-$root/../shared}"
export PYTEST_ADDOPTS="-rs ${PYTEST_ADDOPTS:-}"
unset QALIGN_BIN QALIGN_TEST_APP CFLAGS MAKEFLAGS MFLAGS MAKELEVEL   # nothing of an outer make or run
echo "cross.sh: $target: cc = $cc; binaries run by: $qemu"
if [ $# -eq 0 ]; then
    exec make -C "$tree" --no-print-directory test PYTHON="$py"
fi
if [ "$1" = quick ]; then
    # what depends on the target's kernels and byte order, for CI's time budget: the kernel
    # tests, every fixture record and stage (f32, bf16; q8_0 and q4_1 bounds), other model
    # shapes, the model file, the tokenizer, and the image fixtures' decode and preprocessing
    shift
    set -- tests/test_kernels.py tests/test_reference.py tests/test_accuracy.py tests/test_model_file.py \
           tests/test_tokenizer.py tests/test_images.py tests/test_jpeg.py \
           -k "kernels or reference or model_file or tokenizer" "$@"
fi
make -C "$tree" --no-print-directory -s qalign
cd "$tree" && exec "$py" -m pytest -q "$@"
