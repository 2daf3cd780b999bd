"""Issue 24, Slurm: examples/slurm/score_array.sbatch as an array job on a real one-node Slurm
cluster started on this machine (munged, slurmctld, slurmd from Debian's slurm-wlm and
munge), over the tiny model and ~200 images with some that cannot be scored. One task is
cancelled in the middle of its slice and requeued; it must continue where it stopped. The
parts, merged by examples/slurm/merge.py, must be byte for byte the rows one qalign process
writes over the same list: nothing missing, nothing twice. merge.py's checks are tested on
their own too (a missing row, a row twice, rows of another model: each refused).

The cluster lives in a temporary directory (its munge key and socket, slurm.conf with free
ports, the state and spool directories, the logs); the test always stops what it started:
its jobs, the three daemons, any process left with its SLURM_CONF in its environment (the
job steps), then removes the directory, also when it fails.
"""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from cluster_inputs import shared_dataset, time_limit  # noqa: F401 (autouse: each test ends within 170 s)
from conftest import PYTHON, ROOT, report, run

EXPORT = ROOT / "export.py"
SBATCH_SCRIPT = ROOT / "examples" / "slurm" / "score_array.sbatch"
MERGE = ROOT / "examples" / "slurm" / "merge.py"
SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
QA_ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")


def tool(name):
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def need_slurm():
    missing = [t for t in ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
               if not tool(t)]
    if missing:
        pytest.skip(f"Slurm/munge not installed ({', '.join(missing)} missing; apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the one-node Slurm cluster runs its daemons as root (SlurmUser=root): run the test as root")


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_for(what, cond, timeout, step=0.1, diag=None):
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f"\n{diag()}" if diag else ""))
        time.sleep(step)


class OneNodeSlurm:
    """munged + slurmctld + slurmd on this machine, as root, everything in a temporary
    directory. What a container needs: no cgroup plugin (proctrack/linuxproc, task/none,
    no accounting), the daemons in the foreground (-D/-F) so that they are our children,
    munged's socket in a directory every user can search (munged refuses it otherwise;
    pytest's own temporary directories are 0700), the node's real name, CPUs and memory
    (slurmd -C), ports that are free, and cred_expire=5 (its minimum: a requeued job
    waits that long before it may start again; the default is 120 s)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="qalign-slurm-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.conf = self.dir / "slurm.conf"
        self.env = dict(QA_ENV, SLURM_CONF=str(self.conf))
        self.procs = {}

    def cmd(self, *args, timeout=30, check=True, env=None):
        r = run([tool(args[0]), *args[1:]], env=env or self.env, timeout=timeout)
        if check:
            assert r.returncode == 0, f"{' '.join(map(str, args))}: {r.returncode}\n{r.stdout}{r.stderr}\n{self.logs()}"
        return r

    def start(self):
        d = self.dir
        (d / "state").mkdir()
        (d / "spool").mkdir()
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = d / "munge.sock"
        self.procs["munged"] = subprocess.Popen(
            [tool("munged"), "-F", f"--key-file={key}", f"--socket={sock}", f"--pid-file={d / 'munged.pid'}",
             f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munged.seed'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        wait_for("munged's socket", lambda: run([tool("munge"), "-n", "-S", sock], timeout=10).returncode == 0, 20)
        node = run([tool("slurmd"), "-C"], timeout=30).stdout.splitlines()[0]   # NodeName=<host> CPUs=... RealMemory=...
        assert node.startswith("NodeName="), node
        host = node.split()[0].split("=", 1)[1]
        self.cpus = int(re.search(r"\bCPUs=(\d+)", node).group(1))
        ctld_port, d_port = free_ports(2)
        self.conf.write_text(f"""# a one-node cluster for tests/test_slurm.py
ClusterName=qalignci
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=5
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=ci Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        for name, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D"])):
            self.procs[name] = subprocess.Popen([tool(name), *args], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL, env=self.env)
        wait_for("the node to be idle",
                 lambda: self.cmd("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle", 60, 0.3)
        return self

    def logs(self):
        out = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            p = self.dir / name
            if p.exists():
                out.append(f"--- {name} (tail)\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    def ours(self):
        """Processes with this cluster's SLURM_CONF in their environment (the daemons, job
        steps and what they run), other than this one."""
        mark = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit() and int(p.name) != os.getpid():
                try:
                    if mark in (p / "environ").read_bytes().split(b"\0"):
                        pids.append(int(p.name))
                except OSError:
                    pass
        return pids

    def stop(self):
        try:
            if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
                ids = self.cmd("squeue", "-h", "-o", "%A", check=False, timeout=10).stdout.split()
                if ids:
                    self.cmd("scancel", *sorted(set(ids)), check=False, timeout=10)
                    try:
                        wait_for("the jobs to end", lambda: not self.cmd("squeue", "-h", check=False,
                                                                          timeout=10).stdout.strip(), 20, 0.3)
                    except AssertionError:
                        pass
                self.cmd("scontrol", "shutdown", check=False, timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            pass
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None:
                continue
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for pid in self.ours():   # job steps (slurmstepd) and their programs, if any survived
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


def complete_lines(p):
    """The complete lines of a results file (a row cut short by a kill is not one)."""
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return []
    return data.split(b"\n")[:-1]


def running_with(sl, name):
    """pids of this cluster's processes with `name` in an argument of their command line."""
    pids = []
    for pid in sl.ours():
        try:
            if any(name.encode() in a for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")):
                pids.append(pid)
        except OSError:
            pass
    return pids


def job_fields(sl, job):
    """{field: value} of `scontrol show job -o JOB` (one array task)."""
    r = sl.cmd("scontrol", "-o", "show", "job", job, check=False)
    return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)


@pytest.fixture(scope="module")
def model(tiny_ref, tmp_path_factory):
    p = tmp_path_factory.mktemp("slurm_model") / "tiny_f32.qalign"
    r = run([PYTHON, EXPORT, "-q", tiny_ref / "checkpoint", p, "--dtype", "f32"])
    assert r.returncode == 0, r.stderr
    return p


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, qalign_bin, model):
    """(work dir, list file name, the single-process run's JSONL): ~200 inputs as
    data/NAME in the list, plus one that does not exist; one qalign process over the list."""
    w = tmp_path_factory.mktemp("slurm_data")
    d, names = shared_dataset(tmp_path_factory)
    (w / "data").symlink_to(d)
    (w / "all.txt").write_text("# the inputs of tests/test_slurm.py\n" + "".join(f"data/{n}\n" for n in names)
                               + "data/missing.jpg\n")
    r = run([qalign_bin, "-q", "--jsonl", "one.jsonl", model, "@all.txt"], cwd=w, env=QA_ENV, timeout=300)
    assert r.returncode == 1, r.stderr                           # the bad files
    rows = [json.loads(l) for l in (w / "one.jsonl").read_text().splitlines()]
    assert len(rows) == len(names) + 1 and sum(1 for x in rows if x["error"]) == 4
    return w, "all.txt", w / "one.jsonl"


def readme_line(start):
    """The line of README.md's "Past one machine" section that starts so."""
    text = (ROOT / "README.md").read_text()
    sec = text[text.index("## Past one machine"):]
    return next(l for l in sec.splitlines() if l.startswith(start))


def merge(*args, cwd):
    return run([PYTHON, MERGE, *args], cwd=cwd, timeout=120)


def test_slurm_array_requeue_merge(qalign_bin, model, dataset):
    need_slurm()
    w, lst, one = dataset
    n_inputs = len(complete_lines(one))
    shards, victim = 4, 2
    out = w / "out"
    t0 = time.monotonic()
    with OneNodeSlurm() as sl:
        t_up = time.monotonic() - t0
        (w / "logs").mkdir()

        def diag():
            logs = "".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted((w / "logs").iterdir()))
            return sl.cmd("squeue", check=False).stdout + logs + sl.logs()
        # README's command, with 4 tasks of 1 CPU, this test's log place and --batch 4 (so
        # that rows come often enough to cancel a task in the middle of its slice)
        sb = readme_line("sbatch --array=1-8 ").split()
        assert sb[:4] == ["sbatch", "--array=1-8", "examples/slurm/score_array.sbatch", "model.qalign"], sb
        sb = [tool("sbatch"), "--parsable", f"--array=1-{shards}", "--cpus-per-task=1", "-D", str(w), "--output",
              str(w / "logs" / "task-%a.log"), str(SBATCH_SCRIPT), str(model), *sb[4:], "--batch", "4"]
        r = run(sb, cwd=w, env=dict(sl.env, QALIGN_BIN=str(qalign_bin)), timeout=60)
        assert r.returncode == 0, r.stderr
        job = r.stdout.strip().split(";")[0]
        t_submit = time.monotonic()
        part = out / f"part-{victim}-of-{shards}.jsonl"
        in_slice = len(range(victim - 1, n_inputs, shards))
        wait_for(f"task {victim} to write its first rows", lambda: len(complete_lines(part)) >= 4, 90, 0.02, diag)
        assert running_with(sl, part.name), f"task {victim}'s qalign is not among the cluster's processes"
        sl.cmd("scancel", f"{job}_{victim}")
        wait_for(f"task {victim} to be cancelled",
                 lambda: job_fields(sl, f"{job}_{victim}").get("JobState") == "CANCELLED", 60, 0.2, diag)
        wait_for(f"task {victim}'s qalign to end", lambda: not running_with(sl, part.name), 30, 0.1, diag)
        before = complete_lines(part)
        assert 4 <= len(before) < in_slice, f"task {victim} was not cancelled in the middle: {len(before)} of {in_slice} rows"
        sl.cmd("scontrol", "requeue", f"{job}_{victim}")
        wait_for("the array to finish", lambda: not sl.cmd("squeue", "-h", "-j", job, check=False).stdout.strip(),
                 150, 0.3, diag)
        t_done = time.monotonic()
        tasks = {i: job_fields(sl, f"{job}_{i}") for i in range(1, shards + 1)}
    # every task ran to its end; a slice with a bad input ends with qalign's status 1
    for i, f in tasks.items():
        assert f.get("JobState") in ("COMPLETED", "FAILED"), (i, f.get("JobState"), f.get("Reason"))
        assert f.get("ExitCode") in ("0:0", "1:0"), (i, f.get("ExitCode"))
    assert tasks[victim]["Restarts"] == "1"
    # the requeued task went on from where it was cancelled: its file grew from what it had,
    # and qalign said it reused those rows
    after = complete_lines(part)
    assert after[: len(before)] == before and len(after) >= in_slice
    log = (w / "logs" / f"task-{victim}.log").read_text()
    assert "restart 1" in log, log
    failed_before = sum(1 for x in before if json.loads(x)["error"])
    done_before = len(before) - failed_before
    assert re.search(rf"resume: {done_before} of {in_slice} inputs done before \(rows reused\); "
                     rf"{in_slice - done_before} to score: {in_slice - len(before)} new"
                     + (rf", {failed_before} failed before \(retried\)" if failed_before else "$"), log, re.M), log
    # merged: the single process's rows, byte for byte, in its order; the failures listed
    assert len(list(out.glob(f"part-*-of-{shards}.jsonl"))) == shards
    mg = readme_line("python3 examples/slurm/merge.py ")
    assert mg == "python3 examples/slurm/merge.py all.txt out/part-*-of-8.jsonl -o scores.jsonl", mg
    mg = mg.replace("python3 examples/slurm/", f"{shlex.quote(PYTHON)} {shlex.quote(str(MERGE.parent))}/")
    r = run(["bash", "-c", mg.replace("-of-8", f"-of-{shards}")], cwd=w, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (w / "scores.jsonl").read_bytes() == one.read_bytes()
    failed = sorted(l for l in r.stderr.splitlines() if l.startswith("merge: failed: "))
    assert failed == ["merge: failed: data/cut.jpg: JPEG: truncated file (premature end of entropy-coded data)",
                      "merge: failed: data/empty.jpg: empty file",
                      "merge: failed: data/missing.jpg: No such file or directory",
                      "merge: failed: data/notes.png: not an image or video qalign can read (unknown format)"], r.stderr
    assert f"merge: {n_inputs} inputs, each scored once: {n_inputs - 4} scored, 4 failed" in r.stderr
    report(f"slurm: a {shards}-task array (1 CPU each, {sl.cpus} CPUs) over {n_inputs} inputs: task {victim} cancelled "
           f"after {len(before)} of {in_slice} rows, requeued, resumed; merged = one qalign run byte for byte; "
           f"cluster up in {t_up:.1f} s, array done {t_done - t_submit:.1f} s after submission")


def test_merge_refuses(dataset):
    """merge.py on parts that are wrong: each refused with its reason, nothing written."""
    w, lst, one = dataset
    rows = complete_lines(one)
    t = w / "merge_checks"
    t.mkdir()
    a, b = rows[0::2], rows[1::2]

    def check(name, pa, pb, *needles):
        (t / "a.jsonl").write_bytes(b"".join(x + b"\n" for x in pa))
        (t / "b.jsonl").write_bytes(b"".join(x + b"\n" for x in pb))
        r = merge(lst, t / "a.jsonl", t / "b.jsonl", "-o", t / "m.jsonl", cwd=w)
        if not needles:
            assert r.returncode == 0 and (t / "m.jsonl").read_bytes() == one.read_bytes(), (name, r.stderr)
            (t / "m.jsonl").unlink()
            return
        assert r.returncode == 1 and not (t / "m.jsonl").exists(), (name, r.returncode, r.stderr)
        for n in needles:
            assert n in r.stderr, (name, n, r.stderr)

    def path(raw):
        return json.loads(raw)["path"]

    good = next(x for x in a if json.loads(x)["error"] is None)
    bad = next(x for x in a if json.loads(x)["error"] is not None)
    check("as made", a, b)
    check("a row lost", [x for x in a if x != good], b, f"{path(good)}: missing (no row in any part)")
    check("a row in two parts", a, b + [good], f"{path(good)}: scored twice: rows in ")
    check("a result twice in one part", a + [good], b, f"{path(good)}: scored twice: 2 results in ")
    # a failure, then the retry's result (a requeued task retrying what failed): accepted
    retried = json.loads(good)
    retried.update({k: None for k in retried if k.startswith(("p_", "logit_")) or k in ("score", "std")},
                   error="cannot open: Resource temporarily unavailable")
    check("failed, then scored", [json.dumps(retried).encode()] + a, b)
    # rows of another model file (another export of the tiny checkpoint would have the same id)
    other = [x.replace(b'"model": "', b'"model": "0') if x == good else x for x in a]
    check("another model", other, b, "rows made in more than one way")
    check("a path not in the list", a, b + [bad.replace(path(bad).encode(), b"data/elsewhere.jpg")],
          "data/elsewhere.jpg: in ")
    report("slurm: merge.py refuses a lost row, a row in two parts, two results, rows of another model, "
           "a path not in the list; accepts a failure followed by its retry's result")


def test_sbatch_script_alone(qalign_bin, model, dataset):
    """score_array.sbatch run as Slurm would run one task (its environment set by hand):
    the slice it writes, SHARDS= over the array's size, a second run reusing every row,
    parts of another split refused, the usage line."""
    w, lst, one = dataset
    t = w / "alone"
    t.mkdir()
    (t / "data").symlink_to(w / "data")
    names = [json.loads(x)["path"] for x in complete_lines(one)][:30]
    (t / "few.txt").write_text("".join(f"{n}\n" for n in names))
    env = dict(QA_ENV, QALIGN_BIN=str(qalign_bin), SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_MAX="2")
    env.pop("SHARDS", None)

    def task(**kw):
        return run(["bash", SBATCH_SCRIPT, model, "few.txt", "out"], cwd=t, env=dict(env, **kw), timeout=120)

    r = task(SHARDS="3")                                 # task 2 of 3, run on its own
    assert "score_array: task 2/3 (restart 0)" in r.stderr, r.stderr
    rows = [json.loads(x) for x in complete_lines(t / "out" / "part-2-of-3.jsonl")]
    assert [x["path"] for x in rows] == sorted(names)[1::3]
    assert r.returncode == (1 if any(x["error"] for x in rows) else 0), r.stderr
    r = task(SHARDS="3")
    assert f"resume: {sum(1 for x in rows if not x['error'])} of {len(rows)} inputs done before" in r.stderr
    assert len(complete_lines(t / "out" / "part-2-of-3.jsonl")) == len(rows)
    r = task()                                           # N = 2 next to parts of a split into 3
    assert r.returncode == 2 and "is from a split into 3 parts, this task's is into 2" in r.stderr, r.stderr
    assert not (t / "out" / "part-2-of-2.jsonl").exists()
    r = run(["bash", SBATCH_SCRIPT, model], cwd=t, env=env)
    assert r.returncode == 2 and r.stderr.startswith("usage: sbatch --array=1-N"), r.stderr
    report("slurm: score_array.sbatch alone: its slice, SHARDS=, a rerun reusing every row, another split refused")
