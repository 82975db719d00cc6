"""A one-node SLURM cluster on this machine, for tests of the SLURM profile.

``slurm_cluster(directory)`` writes a slurm.conf into ``directory`` (state, spool, pid and log
files beside it, free ports so that a system SLURM is not disturbed), starts munged when no
munge daemon answers, then slurmctld and ``slurmd -N localhost`` in the foreground, waits until
``sinfo`` shows the node idle and yields the environment (``SLURM_CONF``) that clients and
Snakemake need. On exit it cancels the jobs left in its queue and stops exactly the daemons
it started, by their process ids.

The cluster is "configless", as many real ones are: slurmd fetches slurm.conf from slurmctld
and links it at /run/slurm/conf, where SLURM commands without SLURM_CONF find it. Inside a
job that matters: the slurm-jobstep plugin drops every SLURM_* variable but the job's ids,
SLURM_CONF included, before its ``srun``.

Needs root (slurmd starts jobs as their user) and Debian's ``slurmctld slurmd slurm-client
munge`` (install.sh installs them). ``missing()`` says what is absent, for a skip reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from workflow_utils import at_nice

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "unmunge", "sinfo", "squeue", "sbatch", "srun", "scancel", "scontrol")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
# Where a configless slurmd links the config it fetched, and where clients look without
# SLURM_CONF (after /etc/slurm/slurm.conf).
CONFIGLESS_LINK = Path("/run/slurm/conf")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
PARTITION = "deemd"
NODE = "localhost"


def _which(name: str) -> str | None:
    # Daemons live in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def missing() -> str | None:
    """Why a SLURM cluster cannot be started here, or None when it can."""
    absent = [name for name in DAEMONS + CLIENTS if _which(name) is None]
    if absent:
        return f"SLURM or munge not installed (missing {', '.join(absent)}; install.sh installs them as root)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    if SYSTEM_CONF.exists():
        return f"{SYSTEM_CONF} exists: srun inside the test's jobs would use that cluster"
    if CONFIGLESS_LINK.exists():
        return f"{CONFIGLESS_LINK} exists: another (configless) slurmd runs here"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(directory: Path, cpus: int = 2, memory_mb: int = 20000) -> Path:
    """slurm.conf for one node (``localhost``, 127.0.0.1) in one partition, no accounting."""
    for sub in ("state", "spool", "log"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    conf = directory / "slurm.conf"
    conf.write_text(f"""\
ClusterName=deemdtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/log/slurmctld.log
SlurmdLogFile={directory}/log/slurmd.log
# No cgroups: jobs are tracked by process tree, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# CPUs and memory are consumable: jobs that do not fit together wait.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
# No slurmdbd: sacct has nothing to ask, job states come from squeue.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# slurmd (started with --conf-server) fetches this file from slurmctld.
SlurmctldParameters=enable_configless
ReturnToService=2
# squeue keeps finished jobs this long; the Snakemake plugin reads their states there.
MinJobAge=3600
SlurmdParameters=config_overrides
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _munge_answers(env: dict) -> bool:
    try:
        credential = subprocess.run([_which("munge"), "-n"], capture_output=True, env=env, timeout=10)
        if credential.returncode != 0:
            return False
        return subprocess.run([_which("unmunge")], input=credential.stdout, capture_output=True, env=env,
                              timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _start_munged(directory: Path, env: dict) -> subprocess.Popen:
    """munged as user munge, in the foreground (so its pid is ours), on the default socket."""
    run_dir = MUNGE_SOCKET.parent
    run_dir.mkdir(mode=0o755, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    with open(directory / "log" / "munged.out", "ab") as log:
        return subprocess.Popen([_which("munged"), "--foreground", "--force"], user="munge", group="munge",
                                stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _node_state(env: dict) -> str:
    result = subprocess.run([_which("sinfo"), "-h", "-N", "-n", NODE, "-o", "%t"], capture_output=True, text=True,
                            env=env, timeout=20)
    return result.stdout.strip() if result.returncode == 0 else ""


def _stop(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def _logs(directory: Path) -> str:
    text = []
    for log in sorted((directory / "log").glob("*.*")):
        text.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
    return "\n".join(text)


def _start(command: list[str], env: dict, log: Path, nice: int = 0) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=at_nice(nice))


def _port(conf: Path, key: str) -> str:
    return next(line.split("=", 1)[1] for line in conf.read_text().splitlines() if line.startswith(f"{key}="))


@contextlib.contextmanager
def slurm_cluster(directory: Path, cpus: int = 2, memory_mb: int = 20000, nice: int = 0) -> Iterator[dict]:
    """Run a one-node cluster configured in ``directory``; yields the environment to use it.
    Its jobs run at ``nice`` (slurmd's, which they inherit)."""
    directory = Path(directory).resolve()
    conf = write_config(directory, cpus=cpus, memory_mb=memory_mb)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    if CONFIGLESS_LINK.is_symlink() and not CONFIGLESS_LINK.exists():
        CONFIGLESS_LINK.unlink()  # left by a cluster that was killed
    configless_dir_existed = CONFIGLESS_LINK.parent.exists()
    munge_dir_existed = MUNGE_SOCKET.parent.exists()
    started: list[subprocess.Popen] = []  # in start order; stopped in reverse
    controller = None
    try:
        if not _munge_answers(env):
            munged = _start_munged(directory, env)
            started.append(munged)
            _wait(lambda: munged.poll() is not None or _munge_answers(env), 30, "munged to answer")
            if munged.poll() is not None:
                raise RuntimeError(f"munged exited with {munged.returncode}\n{_logs(directory)}")
        controller = _start([_which("slurmctld"), "-D", "-f", str(conf)], env, directory / "log" / "slurmctld.out")
        started.append(controller)
        _wait(lambda: controller.poll() is not None
              or subprocess.run([_which("scontrol"), "ping"], capture_output=True, env=env, timeout=20).returncode == 0,
              60, "slurmctld to answer")
        # Configless: slurmd gets slurm.conf from slurmctld, not from SLURM_CONF.
        without_conf = {key: value for key, value in env.items() if key != "SLURM_CONF"}
        started.append(_start([_which("slurmd"), "-D", "-N", NODE, "--conf-server",
                               f"127.0.0.1:{_port(conf, 'SlurmctldPort')}"], without_conf, directory / "log" / "slurmd.out",
                              nice))
        try:
            _wait(lambda: _node_state(env) == "idle" or any(p.poll() is not None for p in started), 60,
                  f"node {NODE} to be idle")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; sinfo says {_node_state(env)!r}\n{_logs(directory)}") from None
        exited = [p.args[0] for p in started if p.poll() is not None]
        if exited:
            raise RuntimeError(f"{', '.join(exited)} exited\n{_logs(directory)}")
        yield env
    finally:
        if controller is not None and controller.poll() is None:
            # Jobs still queued or running in this cluster (a failed test) go before the daemons.
            subprocess.run([_which("scancel"), "--partition", PARTITION, "--full"], env=env, capture_output=True,
                           timeout=30)
            with contextlib.suppress(TimeoutError):
                _wait(lambda: not subprocess.run([_which("squeue"), "-h", "-t", "PD,R,CG", "-o", "%i"],
                                                 capture_output=True, text=True, env=env).stdout.strip(),
                      30, "cancelled jobs to end")
        for process in reversed(started):
            _stop(process)
        # slurmd leaves its link to the fetched config behind.
        if CONFIGLESS_LINK.is_symlink() and Path(os.readlink(CONFIGLESS_LINK)).is_relative_to(directory):
            CONFIGLESS_LINK.unlink()
            if not configless_dir_existed:
                with contextlib.suppress(OSError):
                    CONFIGLESS_LINK.parent.rmdir()
        if not munge_dir_existed:
            with contextlib.suppress(OSError):
                MUNGE_SOCKET.parent.rmdir()  # made for the munged started here; empty once it ends
