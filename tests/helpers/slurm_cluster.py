"""A throwaway single-node SLURM cluster (munged, slurmctld, slurmd) for the cluster tests.

Everything lives in one temporary folder: the munge key and socket, slurm.conf, state, spool and logs. The
daemons run in the foreground as our own children so teardown can stop them by process id; nothing is written
to /etc or /run, and the machine's own munge or SLURM services (if any) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")


class ClusterUnavailableError(RuntimeError):
    """The cluster could not be started here; the message says why (and carries the daemon logs)."""


def _missing_programs() -> list[str]:
    return [name for name in DAEMONS + CLIENTS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def ensure_packages(timeout: float = 900) -> None:
    """Installs the Debian packages with apt-get when a daemon or client is missing (CI starts bare, as root)."""
    if not _missing_programs():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ClusterUnavailableError(f"missing {', '.join(_missing_programs())} and cannot apt-get install them here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise ClusterUnavailableError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
    if _missing_programs():
        raise ClusterUnavailableError(f"still missing after apt-get: {', '.join(_missing_programs())}")


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _node_hardware() -> dict[str, str]:
    """This machine as slurmd sees it (``slurmd -C``), so the node's CPUs and memory are real."""
    out = subprocess.run([_program("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0] if out else ""))
    if "NodeName" not in fields or "CPUs" not in fields:
        raise ClusterUnavailableError(f"cannot read the node's hardware from 'slurmd -C': {out!r}")
    return fields


SLURM_CONF = """\
ClusterName=ldtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Dispatch within a second or two of a submit, a requeue or a freed CPU, instead of the default minute.
SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=100000
ReturnToService=2
JobRequeue=1
KillWait=2
MessageTimeout=10
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
NodeName={node} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """A running cluster; ``env`` is what SLURM clients need (``SLURM_CONF``) on top of the current environment."""

    root: Path
    conf: Path
    node: str
    cpus: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Runs a SLURM client (``sinfo``, ``squeue``, ...) against this cluster."""
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}\n{self.logs()}")
        return done

    def logs(self, tail: int = 40) -> str:
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {name} (last {len(lines)} lines) ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def job_states(self, job_id: str) -> dict[str, str]:
        """``{"<array>_<task>": state}`` for every task of a job the controller still remembers."""
        out = self.run("squeue", "-h", "-r", "-j", job_id, "-t", "all", "-o", "%i %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_job(self, job_id: str, timeout: float = 300, poll: float = 1.0) -> dict[str, str]:
        """Polls until no task of ``job_id`` is pending, running or being requeued; returns the final states."""
        deadline = time.monotonic() + timeout
        active = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                  "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}
        while True:
            states = self.job_states(job_id)
            if states and not active & set(states.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {states} after {timeout:.0f}s\n{self.logs()}")
            time.sleep(poll)

    def wait_state(self, job_id: str, wanted: str, timeout: float = 120, poll: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while set((states := self.job_states(job_id)).values()) != {wanted}:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {states}, not {wanted}, after {timeout:.0f}s\n{self.logs()}")
            time.sleep(poll)

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancels every job and waits for their steps to exit, so no job process outlives the cluster."""
        self.run("scancel", "--full", "--user", "root", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run("squeue", "-h", "-o", "%i", check=False).stdout
            if not out.strip() and not self._stepd_pids():
                return
            time.sleep(0.5)

    def _stepd_pids(self) -> list[int]:
        """slurmstepd processes of this cluster: the ones holding a socket in our spool folder."""
        spool = str(self.root / "spool")
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if not (proc / "cmdline").read_bytes().startswith(b"slurmstepd"):
                    continue
                if any(os.readlink(fd).startswith(spool) for fd in (proc / "fd").iterdir()):
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        """Stops jobs, then slurmd, slurmctld and munged, each by its process id; removes the folder."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.cancel_all()
        for pid in self._stepd_pids():
            _kill(pid)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def _die_with_parent() -> None:
    # A test run killed outright (CI timeout, SIGKILL) must not leave daemons holding ports and the munge socket.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _start_munged(root: Path) -> subprocess.Popen:
    key = root / "munge.key"
    # munged refuses a key readable by others; 0400 root, as the Debian package installs it.
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(1024))
    cmd = [_program("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={root}/munge.socket",
           f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(root / "munged.stderr", "wb"),
                            start_new_session=True, preexec_fn=_die_with_parent)


def _wait_for(predicate, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise ClusterUnavailableError(f"{name} exited with {proc.returncode} while waiting for {what}\n"
                                         f"{_stderr(cluster.root)}{cluster.logs()}")
        if time.monotonic() > deadline:
            raise ClusterUnavailableError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                     f"{_stderr(cluster.root)}{cluster.logs()}")
        time.sleep(0.2)


def _stderr(root: Path) -> str:
    return "".join(f"--- {p.name} ---\n{p.read_text(errors='replace')}\n" for p in sorted(root.glob("*.stderr"))
                   if p.stat().st_size)


def start(timeout: float = 60) -> SlurmCluster:
    """Starts munged, slurmctld and slurmd in a new temporary folder; returns once the node is idle.

    Raises ``ClusterUnavailableError`` (with the daemons' logs) when the cluster cannot start; whatever was started
    by then is stopped again.
    """
    if os.geteuid() != 0:
        raise ClusterUnavailableError("the test cluster runs its daemons as root (SlurmUser=root); "
                                      "run the tests as root")
    ensure_packages()
    hardware = _node_hardware()
    root = Path(tempfile.mkdtemp(prefix="ld-slurm-"))
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    (root / "plugstack.conf").write_text("")
    ctld_port, slurmd_port = _free_ports(2)
    node = hardware["NodeName"]
    hw = " ".join(f"{k}={hardware[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                                   "ThreadsPerCore", "RealMemory") if k in hardware)
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(node=node, ctld_port=ctld_port, slurmd_port=slurmd_port, root=root,
                                      munge_socket=root / "munge.socket", hardware=hw))
    cluster = SlurmCluster(root=root, conf=conf, node=node, cpus=int(hardware["CPUs"]))
    env = cluster.env
    try:
        cluster.procs["munged"] = _start_munged(root)
        _wait_for(lambda: (root / "munge.socket").exists(), timeout, "the munge socket", cluster)
        # -D: stay in the foreground so the Popen is the daemon; -i: ignore any saved state (there is none).
        for name, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D", "-N", node])):
            cluster.procs[name] = subprocess.Popen([_program(name), *args, "-f", str(conf)], env=env,
                                                   stdout=subprocess.DEVNULL,
                                                   stderr=open(root / f"{name}.stderr", "wb"),
                                                   start_new_session=True, preexec_fn=_die_with_parent)

        def node_idle() -> bool:
            out = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10).stdout.split()
            return out == ["idle"]

        _wait_for(node_idle, timeout, f"node {node} to be idle in sinfo", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


if __name__ == "__main__":
    # By hand: start the cluster, print how to reach it, stop it on Ctrl-C or SIGTERM.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    running = start()
    print(f"export SLURM_CONF={running.conf}\n{running.run('sinfo').stdout}Ctrl-C stops the cluster.", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
