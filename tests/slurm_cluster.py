"""A real single-node SLURM cluster on 127.0.0.1 for tests (helper module, not a test file).

    with slurm_cluster(tmp_path) as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env, check=True)

Needs root and the Debian packages slurmctld, slurmd and slurm-client (`.ci/install-system-deps.sh`);
`slurm_unavailable_reason()` says why a test has to be skipped. Everything the daemons write (config, state,
spool, logs, pid files) lives in `workdir`; the only file touched outside it is /etc/slurm/slurm.conf (see
`_SystemConf`). Tested with slurm-wlm 22.05 (Debian 12).

Traps met while making this work, and their fixes:
- slurmctld refuses to start unless the short hostname is named in SlurmctldHost -> use `hostname -s` there.
- Job steps launched by the snakemake slurm plugin (`srun` inside the job) run with every SLURM_* variable
  removed except the job ids, SLURM_CONF included; srun then looks for /etc/slurm/slurm.conf and otherwise
  tries a DNS SRV lookup and fails -> a copy of the config is installed there while the cluster runs.
- No slurmdbd: `sacct` fails ("accounting storage is disabled"); the plugin's default status command is sacct
  whenever the binary exists, and then snakemake waits forever for jobs that have long finished -> the profile
  sets `slurm-status-command: squeue`. squeue lists finished jobs only for MinJobAge seconds, and the plugin
  goes back to sacct when MinJobAge < 3 * its first status-check delay -> MinJobAge=3600, which also keeps every
  job of a long test run (the whole tiny workflow) visible to `scontrol show job` until the cluster stops.
- Daemons run in the foreground (-D) as our Popen children: we hold their real pids, can wait() for them and
  see at once if one dies; no pid-file races. SlurmUser=SlurmdUser=root, so no `slurm` user or chowned dirs
  are needed; we create state/spool/log dirs ourselves; slurmctld -i ignores errors reading state files.
- Without MpiDefault=none both daemons log pmix load errors; harmless but noise in the logs -> MpiDefault=none.
- With memory as a consumable resource a job without --mem would take all of the node's memory and block
  concurrency -> DefMemPerCPU.
- slurmd's job-step daemons (slurmstepd) outlive slurmd and ignore SIGTERM -> cancel all jobs first, then
  SIGKILL any process that still holds one of our log files open.
- A fake GPU: gres.conf `Name=gpu File=/dev/null` is accepted by slurmd 22.05; jobs asking for --gpus=1 or
  --gres=gpu:1 get CUDA_VISIBLE_DEVICES=0, and a second one waits for the first (Reason=Resources).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# gradvis-test: written by tests/slurm_cluster.py, restored when the test cluster stops"
LOCK_FILE = Path(tempfile.gettempdir()) / "gradvis-slurm-test.lock"
DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")


def _which(name: str) -> str | None:
    """The daemons live in /usr/sbin, which is not on every PATH."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def slurm_unavailable_reason() -> str | None:
    """None when a test cluster can be started here, else why not (for pytest.skip)."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]
    if missing:
        return (
            f"SLURM not installed ({', '.join(missing)} not on PATH); "
            "run .ci/install-system-deps.sh as root to install slurmctld slurmd slurm-client"
        )
    if os.geteuid() != 0:
        return "the single-node SLURM test cluster needs root (daemons run as SlurmUser=root, /etc/slurm/slurm.conf)"
    return None


@dataclass
class SlurmCluster:
    """A running test cluster: `conf` is its slurm.conf, `env` a copy of os.environ with SLURM_CONF set."""

    workdir: Path
    conf: Path
    env: dict[str, str]
    node: str
    partitions: tuple[str, ...] = ("debug", "gpu")
    cpus: int = 1
    memory_mb: int = 1000
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sbatch, squeue, ...) against this cluster; text output captured."""
        return subprocess.run(list(args), env=self.env, text=True, capture_output=True, check=check, timeout=timeout)

    def job(self, job_id: str | int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Partition, TresPerJob, ...)."""
        out = self.run("scontrol", "show", "job", "--oneliner", str(job_id)).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait_job(self, job_id: str | int, timeout: float = 60) -> dict[str, str]:
        """Wait until a job left PENDING/RUNNING/COMPLETING; returns its final `job()`."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"SLURM job {job_id} still {info.get('JobState')} after {timeout}s")
            time.sleep(0.5)

    def log_tails(self, lines: int = 25) -> str:
        """The last lines of each daemon log, for error messages."""
        parts = []
        for path in sorted((self.workdir / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no daemon logs)"


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):  # keep all bound until the end so the ports differ
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _memory_mb() -> int:
    """RealMemory for the node: 3/4 of what is available now (must not exceed what slurmd detects)."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) // 1024
    return max(512, int(info.get("MemAvailable", info["MemTotal"]) * 0.75))


def write_config(workdir: Path) -> SlurmCluster:
    """Write slurm.conf and gres.conf for a one-node cluster on 127.0.0.1 into workdir/etc."""
    workdir = Path(workdir).resolve()
    etc, state, spool, log, run = (workdir / d for d in ("etc", "state", "spool", "log", "run"))
    for d in (etc, state, spool, log, run):
        d.mkdir(parents=True, exist_ok=True)
    node = socket.gethostname().split(".")[0]  # slurmctld compares SlurmctldHost with the short hostname
    cpus = len(os.sched_getaffinity(0))
    memory = _memory_mb()
    ctld_port, slurmd_port = _free_ports(2)
    conf = etc / "slurm.conf"
    conf.write_text(
        f"""{MARKER}
ClusterName=gradvis-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
# Bind to 127.0.0.1 only, never 0.0.0.0.
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
# No munge: nothing to set up, every connection is trusted (fine on a test box).
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
# No cgroups in a container: track job processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=256
# Start jobs as soon as they are submitted (default: batch jobs may wait up to 3 s).
SchedulerParameters=batch_sched_delay=0
# No slurmdbd: `sacct` does not work; squeue and scontrol keep finished jobs for MinJobAge seconds (one hour: tests
# check the state of every job of a run that lasts minutes).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
# Reject at sbatch time a job the node can never run (e.g. more CPUs than it has) instead of leaving it pending
# forever (Reason=PartitionConfig) while snakemake waits.
EnforcePartLimits=ALL
# Trust the node line below even if slurmd detects a different layout (containers, cgroup cpu limits).
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
InactiveLimit=0
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={run}/slurmctld.pid
SlurmdPidFile={run}/slurmd.pid
SlurmctldLogFile={log}/slurmctld.log
SlurmdLogFile={log}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={node} MaxTime=INFINITE State=UP
"""
    )
    # slurmd reads gres.conf next to slurm.conf. /dev/null stands in for a GPU device file.
    (etc / "gres.conf").write_text(f"NodeName={node} Name=gpu File=/dev/null\n")
    env = dict(os.environ, SLURM_CONF=str(conf))
    # A test run inside a real SLURM job must not talk to that job's cluster; the profile's GRADVIS_SLURM_* names
    # (account, partitions) are for real clusters: this one has no accounts and partitions debug and gpu.
    dropped = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "GRADVIS_SLURM_")
    for var in list(env):
        if var.startswith(dropped) and var != "SLURM_CONF":
            del env[var]
    return SlurmCluster(workdir=workdir, conf=conf, env=env, node=node, cpus=cpus, memory_mb=memory)


class _SystemConf:
    """Install our slurm.conf at /etc/slurm/slurm.conf (job steps need it, see module doc); put back what was there.

    The original is moved to slurm.conf.gradvis-test-orig, so a run killed before restoring is repaired by the
    next start (our copy carries MARKER)."""

    backup = SYSTEM_CONF.with_name(SYSTEM_CONF.name + ".gradvis-test-orig")

    def __init__(self, conf: Path):
        self.conf = conf
        self.created_dir = False

    @classmethod
    def _ours(cls) -> bool:
        try:
            return SYSTEM_CONF.is_file() and SYSTEM_CONF.read_text(errors="replace").startswith(MARKER)
        except OSError:
            return False

    def install(self) -> None:
        if self._ours():  # left over by a killed run: restore the original first
            self.restore()
        if not SYSTEM_CONF.parent.is_dir():
            SYSTEM_CONF.parent.mkdir(parents=True)
            self.created_dir = True
        if os.path.lexists(SYSTEM_CONF):
            os.replace(SYSTEM_CONF, self.backup)
        shutil.copyfile(self.conf, SYSTEM_CONF)

    def restore(self) -> None:
        if os.path.lexists(SYSTEM_CONF) and not self._ours():
            return  # someone else replaced it meanwhile: leave theirs alone
        if os.path.lexists(self.backup):
            os.replace(self.backup, SYSTEM_CONF)
        else:
            SYSTEM_CONF.unlink(missing_ok=True)
        if self.created_dir:
            with contextlib.suppress(OSError):
                SYSTEM_CONF.parent.rmdir()


@contextlib.contextmanager
def _lock(timeout: float = 600) -> Iterator[None]:
    """One test cluster per machine at a time (/etc/slurm/slurm.conf is shared), e.g. under pytest-xdist."""
    with open(LOCK_FILE, "w") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another SLURM test cluster holds {LOCK_FILE} for over {timeout}s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _start(cluster: SlurmCluster) -> None:
    conf = str(cluster.conf)
    # -D: stay in the foreground as our child (Popen), so we hold the real pid and can wait() for it; no pid-file
    # races, no daemonizing. slurmctld -i: ignore errors reading the (empty) state directory.
    commands = {
        "slurmctld": [_which("slurmctld"), "-D", "-i", "-f", conf],
        "slurmd": [_which("slurmd"), "-D", "-f", conf, "-N", cluster.node],
    }
    for name, cmd in commands.items():
        with open(cluster.workdir / "log" / f"{name}.stderr", "wb") as out:  # Popen keeps its own copy of the fd
            cluster._procs[name] = subprocess.Popen(
                cmd, env=cluster.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on pytest goes to pytest, which then stops us in order
            )


def _wait_idle(cluster: SlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        for name, proc in cluster._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}\n{cluster.log_tails()}")
        result = cluster.run("sinfo", "--noheader", "--Node", "--format=%T", check=False, timeout=10)
        state = (result.stdout or result.stderr).strip()
        if result.returncode == 0 and state and all(s == "idle" for s in state.split()):  # "idle*": not responding
            return
        time.sleep(0.5)
    raise TimeoutError(f"SLURM node not idle after {timeout}s (sinfo: {state!r})\n{cluster.log_tails()}")


def _our_leftovers(workdir: Path) -> list[int]:
    """Pids of our slurmstepds (they hold workdir/log/slurmd.log open), job scripts run from our spool, and all
    their descendants (collected before anything is killed: orphans get reparented and lose the link)."""
    root, spool = str(workdir), f"{workdir}/spool/"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            if spool in cmdline:
                pids.append(int(entry.name))
            elif cmdline.startswith("slurmstepd"):
                if any(os.readlink(fd).startswith(root) for fd in (entry / "fd").iterdir()):
                    pids.append(int(entry.name))
        except OSError:
            continue
    return _with_descendants(pids)


def _with_descendants(pids: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found and pid != os.getpid():
            found.add(pid)
            todo.extend(children.get(pid, []))
    return sorted(found)


def _stop(cluster: SlurmCluster) -> None:
    # 1. Cancel all jobs, so the slurmstepds end their jobs and exit on their own.
    if all(p.poll() is None for p in cluster._procs.values()):
        with contextlib.suppress(Exception):
            ids = cluster.run("squeue", "--noheader", "--states=PD,R,CG,CF,S", "--format=%i", timeout=10).stdout.split()
            if ids:
                cluster.run("scancel", *ids, check=False, timeout=10)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    left = cluster.run("squeue", "--noheader", "--states=PD,R,CG,CF,S", "--format=%i", timeout=10)
                    if not left.stdout.split():
                        break
                    time.sleep(0.5)
    # 2. Stop the daemons we started (slurmd first, so it does not try to re-register), by pid.
    for name in ("slurmd", "slurmctld"):
        proc = cluster._procs.get(name)
        if proc is None or proc.poll() is not None:
            continue
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    # 3. slurmstepd ignores SIGTERM and outlives slurmd: kill whatever of ours is left, then let init reap it.
    for pid in _our_leftovers(cluster.workdir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Exited slurmstepds (and slurmctld's helper slurmscriptd) stay zombies until init reaps them (they were
    # reparented to it): wait for that too, so `pgrep slurm` is empty once we return.
    deadline = time.monotonic() + 15
    while (_our_leftovers(cluster.workdir) or _slurm_zombies()) and time.monotonic() < deadline:
        time.sleep(0.2)


def _slurm_zombies() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                stat = (entry / "stat").read_text()
                if stat.split(" (", 1)[1].startswith(("slurmstepd) Z", "slurmscriptd) Z", "slurmctld) Z", "slurmd) Z")):
                    pids.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return pids


@contextlib.contextmanager
def slurm_cluster(workdir: Path, start_timeout: float = 60) -> Iterator[SlurmCluster]:
    """Start slurmctld + slurmd for a one-node cluster configured in `workdir`; stop them on exit.

    Yields a SlurmCluster: `.conf` (slurm.conf path), `.env` (os.environ + SLURM_CONF, for subprocess calls),
    `.node`, `.run(*cmd)`, `.job(id)`, `.wait_job(id)`, `.log_tails()`. Partitions: `debug` (default) and `gpu`;
    the node has one fake GPU (gres gpu:1). Raises RuntimeError/TimeoutError with the daemon logs if the node
    does not come up idle within `start_timeout` seconds."""
    reason = slurm_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    cluster = write_config(Path(workdir))
    with _lock(), _sigterm_as_exception():
        _kill_stale_daemons()
        system_conf = _SystemConf(cluster.conf)
        system_conf.install()
        try:
            _start(cluster)
            _wait_idle(cluster, start_timeout)
            yield cluster
        finally:
            try:
                _stop(cluster)
            finally:
                system_conf.restore()


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """A CI timeout usually sends SIGTERM, which would end pytest without running our `finally` (daemons left
    running): turn it into SystemExit while the cluster runs (main thread only, default handler only)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _kill_stale_daemons() -> None:
    """Daemons of a test cluster whose process was SIGKILLed: their config carries MARKER and, as we hold the lock,
    no live test owns them. Killed so they do not hold the node name / GPU of the new cluster."""
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit():
                continue
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if Path(argv[0]).name not in DAEMONS or "-f" not in argv:
                continue
            conf = Path(argv[argv.index("-f") + 1])
            if not conf.is_absolute() or not conf.read_text(errors="replace").startswith(MARKER):
                continue
            for pid in [*_with_descendants([int(entry.name)]), *_our_leftovers(conf.parent.parent)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        except (OSError, IndexError):
            continue


def snakemake_slurm_args(repo: Path, jobs: int = 2) -> list[str]:
    """Snakemake CLI arguments to run a workflow on the test cluster with the repository's SLURM profile.

    The profile's settings apply; these only make a test run fast and inspectable: status checks after 2 s
    instead of 40 s (the plugin adds 10 s per check that finds no finished job), SLURM logs of successful jobs
    kept. No account is set: the plugin then tries to guess one with sacct, warns that it cannot, and submits
    without -A (plugin 2.8 ignores --slurm-no-account)."""
    return [
        "--executor", "slurm",
        "--profile", str(Path(repo) / "profiles" / "slurm"),
        "--jobs", str(jobs),
        "--slurm-init-seconds-before-status-checks", "2",
        "--seconds-between-status-checks", "2",
        "--slurm-keep-successful-logs",
        "--latency-wait", "5",
    ]
