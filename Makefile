# qalign.c - build, test, fuzz, bench, install.
#
#   make                 the portable build (-O3, OpenMP if found): every kernel family of this
#                        architecture compiled in, the best one the CPU allows chosen at run time
#                        (QALIGN_KERNELS=name forces one); the rest at the baseline -march=x86-64
#   make NATIVE=1        one family, the build CPU's (-march=native), chosen at compile time
#   make NO_OMP=1        same without OpenMP (single thread, still correct)
#   make SCALAR=1        no -march flag and no dispatch: the family the compiler's own target
#                        implies (none: the portable scalar kernels); the cross builds use it
#   make install PREFIX=/usr/local   qalign, libqalign.so/.a, qalign.h, qalign.pc; make uninstall
#   make test            build, then run the whole test suite (pytest, ends with its summary)
#   make test-real       golden values with the real one-align weights (QALIGN_REAL_MODEL=FILE)
#                        and Q-ReAlign's against its PyTorch oracle (QALIGN_REAL_QWEN_MODEL=FILE)
#   make sanitize        ./qalign-san: -O1 -g with AddressSanitizer + UBSan (used by the tests
#                        on hostile inputs when present)
#   make fuzz            libFuzzer harnesses in fuzz/, each run FUZZ_SECONDS (needs clang)
#   make bench           full-size random-weight benchmark (minutes; not part of `make test`)
#   make clean

SHELL   := /bin/bash
CC      ?= cc
PYTHON  ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
# -std=c11 with POSIX 2008 (mmap, popen, isatty); nothing GNU-only outside #ifdef.
CFLAGS  ?= -O3
CFLAGS  += -std=c11 -D_POSIX_C_SOURCE=200809L -D_FILE_OFFSET_BITS=64 -Wall -Wextra -Wno-unused-parameter
LDLIBS  += -lm -lpthread

# Kernel families (kernels.c). The portable build compiles kernels_family.c once per family
# of the target architecture, each with its own flags, and picks one at run time; NATIVE=1
# compiles the whole program for this CPU (-march=native) with its one family; SCALAR=1 adds
# no flag (the family follows the compiler's target: the cross builds set -march in CC).
ARCH := $(firstword $(subst -, ,$(shell $(CC) -dumpmachine 2>/dev/null)))
FAMILY_FLAGS_avx2        = -march=x86-64-v3
FAMILY_FLAGS_avx2-vnni   = -march=x86-64-v3 -mavxvnni
FAMILY_FLAGS_avx512      = -march=x86-64-v4
FAMILY_FLAGS_avx512-vnni = -march=x86-64-v4 -mavx512vnni
FAMILY_FLAGS_avx512-bf16 = -march=x86-64-v4 -mavx512vnni -mavx512bf16
FAMILY_FLAGS_amx         = -march=x86-64-v4 -mavx512vnni -mavx512bf16 -mamx-tile -mamx-int8 -mamx-bf16
FAMILY_FLAGS_neon        =
FAMILY_FLAGS_neon-dotprod = -march=armv8.2-a+dotprod
FAMILIES =
ifdef NATIVE
  ifeq ($(shell $(CC) -march=native -x c -E /dev/null >/dev/null 2>&1 && echo ok),ok)
    CFLAGS += -march=native
  endif
else ifndef SCALAR
  ifeq ($(ARCH),x86_64)
    FAMILIES = amx avx512-bf16 avx512-vnni avx512 avx2-vnni avx2
    CFLAGS += -march=x86-64 -DQA_DISPATCH
  else ifeq ($(ARCH),aarch64)
    FAMILIES = neon-dotprod neon
    CFLAGS += -DQA_DISPATCH
  endif
endif
OBJ ?= build/obj
FAM_OBJS = $(patsubst %,$(OBJ)/family_%.o,$(FAMILIES))

# OpenMP: used when the compiler has it, unless NO_OMP=1. Without it the pragmas are
# ignored and everything runs on one thread.
ifndef NO_OMP
  ifeq ($(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null >/dev/null 2>&1 && echo ok),ok)
    CFLAGS += -fopenmp
    $(info ✓ OpenMP found)
  else
    $(info ✗ OpenMP not found: building single-threaded)
  endif
endif

# The library (qalign.h): the model, its kernels, the tokenizers (SentencePiece, byte-level BPE), image decoding and
# preprocessing. The command line (cli.c and the batch side, APP_SRCS) uses it through qalign.h only.
LIB_SRCS = qalign.c platform.c kernels.c tokenizer.c bpe.c image.c image_bmp.c image_png.c image_jpeg.c image_jpeg_scan.c image_jpeg_enc.c image_qwen.c
# cli.c is main and the commands; options.c the option table (options.h) that parses argv and writes --help.
# serve.c / serve_http.c / serve_parse.c: --listen and --stdio (serve.h; serve_state.h between the first two),
# on the same public headers.
# The batch side (app.h): inputs, video, result rows and files, evaluation, report, progress, sink.
APP_SRCS = app_util.c inputs.c video.c results.c evaluate.c report.c progress.c sink.c
APP_HDRS = app.h app_util.h inputs.h video.h results.h evaluate.h report.h progress.h sink.h
CLI_SRCS = cli.c options.c $(APP_SRCS) serve.c serve_http.c serve_parse.c
SRCS     = $(LIB_SRCS) $(CLI_SRCS)
HDRS     = qalign.h qwen35.c common.h platform.h kernels.h $(wildcard kernels/*.h) tokenizer.h bpe.h bpe_unicode.h image.h image_jpeg.h image_jpeg_dec.h image_qwen.h $(APP_HDRS) serve.h serve_state.h options.h

# The build flavour (compiler, flags, kernel families: `make` vs `make NATIVE=1`, NO_OMP=1,
# CFLAGS=...) is a dependency of everything compiled: $(OBJ)/flavour holds it and is
# rewritten only when it changes, so switching flavours rebuilds instead of linking objects
# of the other one.
FLAVOUR       := $(CC) $(CFLAGS) $(LDLIBS) families: $(FAMILIES)
FLAVOUR_STAMP := $(OBJ)/flavour
ifneq ($(file <$(FLAVOUR_STAMP)),$(FLAVOUR))
  $(shell mkdir -p $(OBJ))
  $(file >$(FLAVOUR_STAMP),$(FLAVOUR))
endif
HDRS += $(FLAVOUR_STAMP)
.DEFAULT_GOAL := all   # (the stamp's rule below would otherwise be the first target)
$(FLAVOUR_STAMP): ;
AR      ?= ar

.PHONY: all test sanitize fuzz fuzz-build bench clean install uninstall
all: qalign libqalign.a libqalign.so examples/score

qalign: $(SRCS) $(HDRS) $(FAM_OBJS)
	$(CC) $(CFLAGS) -o $@ $(SRCS) $(FAM_OBJS) $(LDLIBS)

# one object per kernel family, with that family's target flags (kernels_family.c)
$(OBJ)/family_%.o: kernels_family.c $(HDRS)
	@mkdir -p $(OBJ)
	$(CC) $(CFLAGS) $(FAMILY_FLAGS_$*) -DQA_FAMILY_FN=kernels_family_$(subst -,_,$*) -fPIC -c -o $@ $<

# libqalign.a and libqalign.so: position-independent objects in build/obj/
LIB_OBJS = $(patsubst %.c,$(OBJ)/%.o,$(LIB_SRCS)) $(FAM_OBJS)
$(OBJ)/%.o: %.c $(HDRS)
	@mkdir -p $(OBJ)
	$(CC) $(CFLAGS) -fPIC -c -o $@ $<
libqalign.a: $(LIB_OBJS)
	rm -f $@ && $(AR) rcs $@ $^
# the shared library exports qalign_* only (libqalign.map); soname libqalign.so.$(SOVERSION)
VERSION   = 0.21.0
SOVERSION = 0
libqalign.so: $(LIB_OBJS) libqalign.map
	$(CC) $(CFLAGS) -shared -Wl,-soname,libqalign.so.$(SOVERSION) -Wl,--version-script=libqalign.map -o $@ $(LIB_OBJS) $(LDLIBS)
	ln -sf libqalign.so libqalign.so.$(SOVERSION)   # what programs linked here load (LD_LIBRARY_PATH=.)

# ---- install (PREFIX, DESTDIR) -----------------------------------------------------------
PREFIX     ?= /usr/local
BINDIR      = $(PREFIX)/bin
LIBDIR      = $(PREFIX)/lib
INCDIR      = $(PREFIX)/include
PCDIR       = $(LIBDIR)/pkgconfig
INSTALLED   = $(BINDIR)/qalign $(LIBDIR)/libqalign.so.$(VERSION) $(LIBDIR)/libqalign.so.$(SOVERSION) \
              $(LIBDIR)/libqalign.so $(LIBDIR)/libqalign.a $(INCDIR)/qalign.h $(INCDIR)/qalign/image.h $(PCDIR)/qalign.pc
install: qalign libqalign.so libqalign.a
	mkdir -p $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCDIR)/qalign $(DESTDIR)$(PCDIR)
	cp qalign $(DESTDIR)$(BINDIR)/qalign
	cp libqalign.so $(DESTDIR)$(LIBDIR)/libqalign.so.$(VERSION)
	ln -sf libqalign.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libqalign.so.$(SOVERSION)
	ln -sf libqalign.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libqalign.so
	cp libqalign.a $(DESTDIR)$(LIBDIR)/libqalign.a
	cp qalign.h $(DESTDIR)$(INCDIR)/qalign.h
	cp image.h $(DESTDIR)$(INCDIR)/qalign/image.h
	printf 'prefix=%s\nlibdir=%s\nincludedir=%s\n\nName: qalign\nDescription: image and video quality scoring (Q-Align) in C\nVersion: %s\nLibs: -L$${libdir} -lqalign\nLibs.private: -lm -lpthread %s\nCflags: -I$${includedir} -I$${includedir}/qalign\n' \
	    '$(PREFIX)' '$(LIBDIR)' '$(INCDIR)' '$(VERSION)' '$(OMP_FLAG)' > $(DESTDIR)$(PCDIR)/qalign.pc
uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	-rmdir $(DESTDIR)$(INCDIR)/qalign 2>/dev/null

# examples/score.c: a program that embeds qalign through qalign.h
examples/%: examples/%.c libqalign.a qalign.h image.h
	$(CC) $(CFLAGS) -I. -o $@ $< libqalign.a $(LDLIBS)

# C test drivers. White-box ones (test_kernels, test_model) #include qalign.c and
# kernels.c with -DTESTING to reach their static functions; the others use the headers.
TEST_LINK = $(filter-out qalign.c kernels.c cli.c options.c serve.c serve_http.c,$(SRCS))
build/%: tests/%.c $(SRCS) $(HDRS) $(FAM_OBJS)
	@mkdir -p build
	$(CC) $(CFLAGS) -Wno-unused-function -DTESTING -I. -o $@ $< $(TEST_LINK) $(FAM_OBJS) $(LDLIBS)

# bench/qwen_stages.c: seconds per stage of the Qwen3.5 forward (white-box, as test_qwen)
build/qwen_stages: bench/qwen_stages.c $(SRCS) $(HDRS) $(FAM_OBJS)
	@mkdir -p build
	$(CC) $(CFLAGS) -Wno-unused-function -DTESTING -I. -o $@ $< $(TEST_LINK) $(FAM_OBJS) $(LDLIBS)

# test_api embeds qalign as a user would: qalign.h and libqalign.a only
build/test_api: tests/test_api.c libqalign.a qalign.h image.h
	@mkdir -p build
	$(CC) $(CFLAGS) -I. -o $@ $< libqalign.a $(LDLIBS)
build/test_api_null: tests/test_api_null.c libqalign.a qalign.h
	@mkdir -p build
	$(CC) $(CFLAGS) -I. -o $@ $< libqalign.a $(LDLIBS)

TEST_BINS = $(patsubst tests/%.c,build/%,$(wildcard tests/test_*.c))

test: qalign examples/score $(TEST_BINS)
	$(PYTHON) -m pytest -q tests

# Golden values for the real one-align weights (tests/real_weights.py): skipped, saying how
# to enable it, unless QALIGN_REAL_MODEL names a one-align model file.
.PHONY: test-real
test-real: qalign
	$(PYTHON) -m pytest -q -rs tests/real_weights.py tests/real_weights_qwen.py

# ---- sanitizers -------------------------------------------------------------------------
SAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
qalign-san: $(SRCS) $(HDRS)
	$(CC) -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Wno-unused-parameter $(SAN_FLAGS) -o $@ $(SRCS) $(LDLIBS)
sanitize: qalign-san

# ---- fuzzing (clang libFuzzer) ----------------------------------------------------------
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_FLAGS    = -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_BINS     = $(patsubst fuzz/%.c,build/%,$(wildcard fuzz/fuzz_*.c))
# what each harness is linked with: the image decoders; the whole library (the model loader);
# the batch side (the result files that --resume reads); the server's parsers (serve_parse.c); bpe.c
IMAGE_SRCS         = image.c image_bmp.c image_png.c image_jpeg.c image_jpeg_scan.c image_jpeg_enc.c
FUZZ_SRCS          = $(IMAGE_SRCS)
FUZZ_SRCS_fuzz_model   = $(LIB_SRCS)
FUZZ_SRCS_fuzz_results = $(APP_SRCS) $(IMAGE_SRCS)
FUZZ_SRCS_fuzz_http    = serve_parse.c
FUZZ_SRCS_fuzz_json    = serve_parse.c
FUZZ_SRCS_fuzz_bpe     = bpe.c
.SECONDEXPANSION:
build/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz_decode.h $$(or $$(FUZZ_SRCS_fuzz_$$*),$$(FUZZ_SRCS)) $(HDRS)
	@mkdir -p build
	$(FUZZ_CC) $(FUZZ_FLAGS) -I. -o $@ $< $(or $(FUZZ_SRCS_fuzz_$*),$(FUZZ_SRCS)) -lm -lpthread
fuzz-build: $(FUZZ_BINS)
# Each harness runs FUZZ_SECONDS on its seed corpus (build/corpus/<name>, made by the tests:
# `make test` first, or tests/test_fuzz.py, which also runs each harness for a short while).
fuzz: fuzz-build
	@for f in $(FUZZ_BINS); do n=$$(basename $$f); mkdir -p build/corpus/$$n; \
	  echo "== $$n ($(FUZZ_SECONDS) s)"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -malloc_limit_mb=2048 -print_final_stats=1 \
	      build/corpus/$$n $$( [ -d fuzz/corpus/$$n ] && echo fuzz/corpus/$$n ) 2>&1 | \
	      grep -E 'stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY|crash-' ; \
	  test $${PIPESTATUS[0]:-0} -eq 0 || exit 1; done

# ---- benchmark (full-size random weights; see bench/bench.py) ----------------------------
bench: qalign
	$(PYTHON) bench/bench.py
	$(PYTHON) bench/serve.py
	$(PYTHON) bench/generate.py --from-cache
	$(PYTHON) bench/qwen.py

clean:
	rm -rf qalign qalign-san build libqalign.a libqalign.so libqalign.so.* examples/score

# Kernel micro-benchmark (one thread, GFLOP/s per weight type and shape).
build/bench_kernels: bench/kernels.c $(SRCS) $(HDRS) $(FAM_OBJS)
	@mkdir -p build
	$(CC) $(CFLAGS) -Wno-unused-function -DTESTING -I. -o $@ $< $(TEST_LINK) $(FAM_OBJS) $(LDLIBS)

# One-row (decode) matmuls over a decoder layer's weights: GB/s through matvec and tile().
build/bench_matvec: bench/matvec.c $(SRCS) $(HDRS) $(FAM_OBJS)
	@mkdir -p build
	$(CC) $(CFLAGS) -Wno-unused-function -DTESTING -I. -o $@ $< $(TEST_LINK) $(FAM_OBJS) $(LDLIBS)

# The q8_0 inner loop from L1 in four forms, each adding one cost (bench/ANALYSIS.md).
build/q8loop: bench/q8loop.c
	@mkdir -p build
	$(CC) -O3 -march=native -std=c11 -Wall -Wextra -o $@ $<

# ---- x86 variant builds (each compiles a different set of SIMD kernels) ------------------
# The tests build and run these too (tests/test_variants.py), so every kernel path that can
# run on the test machine is tested, not just the one -march=native picks.
VARIANT_FLAGS_scalar     = -O3
VARIANT_FLAGS_avx2       = -O3 -march=x86-64-v3
VARIANT_FLAGS_avx2vnni   = -O3 -march=x86-64-v3 -mavxvnni
VARIANT_FLAGS_avx512     = -O3 -march=x86-64-v4 -mavx512vnni -mavx512bf16
VARIANT_FLAGS_avx512-novnni = -O3 -march=x86-64-v4
VARIANT_FLAGS_avx512vnni = -O3 -march=x86-64-v4 -mavx512vnni
OMP_FLAG := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null >/dev/null 2>&1 && echo -fopenmp)
BASE_FLAGS = -std=c11 -D_POSIX_C_SOURCE=200809L -D_FILE_OFFSET_BITS=64 -Wall -Wextra -Wno-unused-parameter $(OMP_FLAG)
build/qalign-%: $(SRCS) $(HDRS)
	@mkdir -p build
	$(CC) $(BASE_FLAGS) $(VARIANT_FLAGS_$*) -o $@ $(SRCS) $(LDLIBS)
build/test_kernels-%: tests/test_kernels.c $(SRCS) $(HDRS)
	@mkdir -p build
	$(CC) $(BASE_FLAGS) $(VARIANT_FLAGS_$*) -Wno-unused-function -DTESTING -I. -o $@ $< $(TEST_LINK) $(LDLIBS)
build/bench_kernels-%: bench/kernels.c $(SRCS) $(HDRS)
	@mkdir -p build
	$(CC) $(BASE_FLAGS) $(VARIANT_FLAGS_$*) -Wno-unused-function -DTESTING -I. -o $@ $< $(TEST_LINK) $(LDLIBS)

# ---- other CPUs: cross builds run under qemu-user (tests/cross.sh, PORTING.md) -----------
# `make test-aarch64` builds qalign and the test drivers with aarch64-linux-gnu-gcc in
# build/cross/aarch64/ and runs the whole test suite there, every target binary through
# qemu-aarch64. `make test-cross-quick` runs the part CI runs (cross.sh quick) for the three
# CI targets; `make test-portability` the native checks of tests/test_portability.py
# (compiler warnings, big-endian s390x, 32-bit armhf).
CROSS_TARGETS    = aarch64 aarch64-nodot aarch64-scalar riscv64 armhf
CROSS_CI_TARGETS = aarch64 aarch64-nodot riscv64
.PHONY: test-cross-quick test-portability $(addprefix test-,$(CROSS_TARGETS))
$(addprefix test-,$(CROSS_TARGETS)): test-%:
	PYTHON=$(PYTHON) bash tests/cross.sh $*
test-cross-quick:
	@for t in $(CROSS_CI_TARGETS); do PYTHON=$(PYTHON) bash tests/cross.sh $$t quick || exit 1; done
test-portability:
	$(PYTHON) -m pytest -q -rs tests/test_portability.py
