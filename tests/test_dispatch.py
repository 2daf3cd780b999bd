"""One build for every CPU (issue 21): the portable qalign (`make`: every kernel family compiled
in, one chosen at run time) on CPUs older than this one, under qemu-user; the choice and its
refusals (QALIGN_KERNELS, qalign_open_options.kernels via the CLI); the same for AArch64 with
and without the dot-product extension; and `make install` / `make uninstall` with the example
built against the installed copy through pkg-config.

The portable build against each family's native build (bit for bit) is tests/test_variants.py;
the kernels of every family, the AMX family on the model of the tile unit and on the real one,
tests/test_kernels.c."""
import json
import os
import platform
import re
import shutil

import pytest

from conftest import EMULATED, PYTHON, ROOT, TARGET, report, run, logits

if EMULATED:
    pytest.skip(f"{TARGET or 'emulated'} run: the dispatch tests start their own emulators", allow_module_level=True)

X86 = platform.machine() in ("x86_64", "AMD64")
RECORDS = ["photo__quality", "video__quality"]


def need(*tools, pkgs):
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} not installed (Debian: apt-get install {pkgs})")


@pytest.fixture(scope="module")
def tiny_f32(tiny_ref, workdir):
    p = workdir / "dispatch_f32.qalign"
    if not p.exists():
        r = run([PYTHON, ROOT / "export.py", "-q", tiny_ref / "checkpoint", p, "--dtype", "f32"])
        assert r.returncode == 0, r.stderr
    return p


def portable(qalign_bin, model):
    info = run([qalign_bin, "--info", model])
    if "compile time" in info.stdout:
        pytest.skip("this qalign was built without run-time dispatch (make NATIVE=1 / SCALAR=1)")
    return info


def family_of(cmd, model, env=None):
    r = run([*cmd, "--info", model], env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("family "))
    return line.split()[1].rstrip(":"), line


def check_records(cmd, model, tiny_ref, env=None):
    refj = json.loads((tiny_ref / "reference.json").read_text())
    worst = 0.0
    for name in RECORDS:
        rec = next(x for x in refj["records"] if x["name"] == name)
        args = ["--json", "-t", rec["task"]] + (["--video"] if rec["input_kind"] == "video" else [])
        r = run([*cmd, model, *args, *[tiny_ref / f for f in rec["input_files"]]], env={**os.environ, **(env or {})})
        assert r.returncode == 0, r.stderr
        d = max(abs(a - b) for a, b in zip(logits(json.loads(r.stdout)), rec["level_logits"]))
        assert d <= 2e-4, (name, d)
        worst = max(worst, d)
    return worst


def test_choice_and_refusals(qalign_bin, tiny_f32, tiny_ref):
    info = portable(qalign_bin, tiny_f32)
    fam, line = family_of([qalign_bin], tiny_f32)
    assert "the best this CPU allows" in line, line
    # every family name of this build: runs (and says it was asked for) or is refused in one line
    names = re.search(r"this build has: ([^)]*)\)", run([qalign_bin, tiny_f32, tiny_ref / "inputs" / "photo.jpg"],
                                                         env={**os.environ, "QALIGN_KERNELS": "nonesuch"}).stderr)
    assert names, "an unknown family is refused with the list of the build's families"
    ran, refused = [], []
    for f in names.group(1).split(", "):
        r = run([qalign_bin, tiny_f32, tiny_ref / "inputs" / "photo.jpg"], env={**os.environ, "QALIGN_KERNELS": f})
        if r.returncode == 0:
            assert family_of([qalign_bin], tiny_f32, {"QALIGN_KERNELS": f})[1].startswith(f"family      {f}: QALIGN_KERNELS")
            ran.append(f)
        else:
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 1 and len(lines) == 1 and "cannot run here: this CPU lacks" in lines[0], r.stderr
            refused.append(f)
    assert "scalar" in ran and fam in ran
    report(f"dispatch: this CPU gets {fam}; QALIGN_KERNELS runs {', '.join(ran)}; refuses {', '.join(refused) or 'none'}")
    assert info.returncode == 0


@pytest.mark.parametrize("cpu,want", [("Westmere", "scalar"), ("Haswell", "avx2")])
def test_old_x86_cpus(cpu, want, qalign_bin, tiny_f32, tiny_ref):
    """The portable qalign on a CPU without AVX (Westmere) and one with AVX2 but no AVX-512
    (Haswell), emulated: it picks scalar / AVX2 and scores the fixtures; asking for a family
    the CPU lacks is refused."""
    if not X86:
        pytest.skip(f"{platform.machine()}: the x86-64 build is tested on x86-64 hosts")
    need("qemu-x86_64", pkgs="qemu-user")
    portable(qalign_bin, tiny_f32)
    qemu = ["qemu-x86_64", "-cpu", cpu]
    fam, line = family_of(qemu + [qalign_bin], tiny_f32)
    assert fam == want, line
    worst = check_records(qemu + [qalign_bin], tiny_f32, tiny_ref, {"OMP_NUM_THREADS": "2"})
    r = run([*qemu, qalign_bin, tiny_f32, tiny_ref / "inputs" / "photo.jpg"], env={**os.environ, "QALIGN_KERNELS": "avx512"})
    assert r.returncode == 1 and re.search(r"avx512 cannot run here: this CPU lacks (avx2|avx512f)\n", r.stderr), r.stderr
    report(f"dispatch: qemu-x86_64 -cpu {cpu}: family {fam}; fixture logits max |d| {worst:.1e}; avx512 refused")


@pytest.fixture(scope="module")
def aarch64_portable():
    """The portable build for AArch64 (both NEON families compiled in), made by the Makefile
    with the cross compiler in a copy of the sources (build/cross/aarch64-portable)."""
    need("aarch64-linux-gnu-gcc", "qemu-aarch64", pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user")
    tree = ROOT / "build" / "cross" / "aarch64-portable"
    tree.mkdir(parents=True, exist_ok=True)
    for p in ROOT.iterdir():
        if p.suffix in (".c", ".h", ".map") or p.name in ("Makefile", "kernels"):
            if p.is_dir():
                shutil.copytree(p, tree / p.name, dirs_exist_ok=True)
            else:
                shutil.copy2(p, tree / p.name)
    env = {k: v for k, v in os.environ.items() if k not in ("CFLAGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = run(["make", "-C", tree, "-s", "CC=aarch64-linux-gnu-gcc", "AR=aarch64-linux-gnu-ar", "qalign"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return tree / "qalign"


@pytest.mark.parametrize("cpu,want", [("neoverse-n1", "neon-dotprod"), ("cortex-a72", "neon")])
def test_aarch64_with_and_without_dotprod(cpu, want, aarch64_portable, tiny_f32, tiny_ref):
    qemu = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-cpu", cpu]
    fam, line = family_of(qemu + [aarch64_portable], tiny_f32)
    assert fam == want, line
    worst = check_records(qemu + [aarch64_portable], tiny_f32, tiny_ref, {"OMP_NUM_THREADS": "2"})
    if want == "neon":
        r = run([*qemu, aarch64_portable, tiny_f32, tiny_ref / "inputs" / "photo.jpg"],
                env={**os.environ, "QALIGN_KERNELS": "neon-dotprod"})
        assert r.returncode == 1 and "this CPU lacks asimddp" in r.stderr, r.stderr
    report(f"dispatch: portable aarch64 build on qemu -cpu {cpu}: family {fam}; fixture logits max |d| {worst:.1e}")


def test_install_pkgconfig_uninstall(tiny_f32, tiny_ref, qalign_bin, workdir):
    need("pkg-config", pkgs="pkgconf")
    prefix = workdir / "prefix"
    shutil.rmtree(prefix, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = run(["make", "-C", ROOT, "-s", "install", f"PREFIX={prefix}"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    so = prefix / "lib" / "libqalign.so"
    assert so.is_symlink() and (prefix / "bin" / "qalign").exists() and (prefix / "lib" / "libqalign.a").exists()
    soname = run(["objdump", "-p", so]).stdout
    assert re.search(r"SONAME\s+libqalign\.so\.0\b", soname), soname
    exported = [ln.split()[-1] for ln in run(["nm", "-D", "--defined-only", so]).stdout.splitlines()]
    stray = [s for s in exported if not s.startswith("qalign_") and s.split("@")[0] not in ("image_load", "image_free", "QALIGN_0")]
    assert not stray, f"libqalign.so exports {stray}"
    pc = {**os.environ, "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")}
    flags = run(["pkg-config", "--cflags", "--libs", "qalign"], env=pc)
    assert flags.returncode == 0, flags.stderr
    exe = workdir / "score_installed"
    r = run(["cc", "-O2", "-o", exe, ROOT / "examples" / "score.c", *flags.stdout.split()], cwd=workdir)
    assert r.returncode == 0, r.stderr
    img = tiny_ref / "inputs" / "photo.jpg"
    got = run([exe, tiny_f32, img], env={**os.environ, "LD_LIBRARY_PATH": str(prefix / "lib")})
    want = run([qalign_bin, tiny_f32, img]).stdout.split()[0]
    assert got.returncode == 0 and got.stdout.strip() == want, (got.stdout, got.stderr, want)
    assert "libqalign.so.0" in run(["ldd", exe], env={**os.environ, "LD_LIBRARY_PATH": str(prefix / "lib")}).stdout
    r = run(["make", "-C", ROOT, "-s", "uninstall", f"PREFIX={prefix}"], env=env)
    assert r.returncode == 0, r.stderr
    left = [p for p in prefix.rglob("*") if not p.is_dir()]
    assert not left, f"make uninstall left {left}"
    report(f"dispatch: make install (soname libqalign.so.0, {len(exported)} exported symbols), the example via "
           f"pkg-config prints qalign's score {want}; make uninstall leaves no file")


def test_health_names_the_family(qalign_bin, tiny_f32):
    from test_serve import ENV, Server, request
    with Server(qalign_bin, tiny_f32, env={**ENV, "QALIGN_KERNELS": "avx2" if X86 else "scalar"}) as s:
        st, _, body = request(s.port, "GET", "/health")
    h = json.loads(body)
    assert st == 200 and h["kernels"].startswith(("avx2: QALIGN_KERNELS", "scalar: QALIGN_KERNELS")), h
    report(f"dispatch: /health says \"kernels\": \"{h['kernels'][:40]}...\"")
