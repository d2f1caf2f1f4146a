"""``fedmef run --engine flower``: a run whose clients train on Flower SuperNodes.

Two ways (docs/flower.md):

- **One machine** (:func:`run_local`): start a SuperLink and SuperNodes on 127.0.0.1, submit
  the run, relay its log, wait for it, stop every process, return the run's summary. The
  SuperNodes are slot nodes, one per client sampled per round (``supernodes="slots"``), or one
  device node per client partition (``"partitions"``).
- **A running federation** (:func:`submit`): submit the run to a SuperLink elsewhere (whose
  SuperNodes were started on the devices) and relay its log until it ends.

Process hygiene (issue 15): every process gets ``FLWR_TELEMETRY_ENABLED=0`` and
``FLWR_DISABLE_UPDATE_CHECK=1``, its own ``FLWR_HOME`` and a token in its environment
(``FEDMEF_FLOWER_TOKEN``, inherited by the processes Flower starts from it: the SuperExec, the
ServerApp, each ClientApp); the SuperLink runs with ``--insecure
--disable-runtime-dependency-installation --host 127.0.0.1`` and every socket binds to
127.0.0.1. No Ray, and never ``flwr run``'s default ``:local:`` connection (it would leave a
detached SuperLink running): the ``flwr`` CLI gets an explicit connection in its own
``FLWR_HOME``. :meth:`LocalFederation.stop` runs on success, error and Ctrl-C: it stops the
SuperNodes and the SuperLink by their PIDs, then every process still carrying the token (Flower
starts some in new sessions), first with SIGTERM, then SIGKILL, and waits until none is left.

The Flower workspace (the ``FLWR_HOME`` directories, the generated app, the logs) is the hidden
directory ``.NAME.flower-PID-HEX`` (HEX: 8 random hex digits) beside the run directory
``NAME``, like the run's lock and its build directory (:mod:`refimpl.fl.rundir`): a run
directory is built beside and swapped in, and replaced by ``--overwrite``, so live Flower state
cannot sit inside it. The workspace is removed after a run that succeeded and kept (its path
printed) after one that failed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..rundir import check_resumable, check_target
from ..store import atomic_write_text, list_checkpoints
from . import FLWR_VERSION, require_flwr

__all__ = ["FlowerRunError", "LocalFederation", "run_local", "submit", "write_app",
           "TOKEN_VAR", "token_processes", "alive", "APP_NAME"]

TOKEN_VAR = "FEDMEF_FLOWER_TOKEN"
APP_NAME = "fedmef-flower-app"
_CONNECTION = "fedmef"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BARE = re.compile(r"(INFO|DEBUG|WARNING|ERROR)\s*:\s*")  # Flower's empty log lines
_STALE = re.compile(r"\.(?P<name>.+)\.flower-(?P<pid>\d+)-[0-9a-f]{8}")


class FlowerRunError(RuntimeError):
    """The Flower run could not start or did not finish; the message says why and where the
    run directory stands."""

    user_facing = True


# ---- the app -----------------------------------------------------------------------------------
def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def write_app(app_dir: Path, *, config_text: str, out: str, resume: bool = False,
              overwrite: bool = False, node_timeout: float = 120.0, min_nodes: int = 1,
              result_file: str = "") -> Path:
    """Write the Flower app directory of one run (its ``pyproject.toml``): the components
    :mod:`refimpl.fl.flower.apps` and the run config they read. ``flwr run APP_DIR CONNECTION``
    submits it. fedmef-refimpl with its ``flower`` extra must be installed wherever the
    ServerApp and the ClientApps run (runtime dependency installation stays off)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    text = f"""# A FedMef run for Flower's Deployment Engine, written by fedmef-refimpl.
# Submit with: flwr run {app_dir} CONNECTION --stream
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "FedMef (refimpl.fl) on Flower: the ServerApp runs fedmef run, the ClientApps train"
license = "MIT"
# fedmef-refimpl[flower] (flwr=={FLWR_VERSION}) is installed on every machine beforehand
dependencies = []

[tool.flwr.app]
publisher = "fedmef"

[tool.flwr.app.components]
serverapp = "refimpl.fl.flower.apps:server_app"
clientapp = "refimpl.fl.flower.apps:client_app"

[tool.flwr.app.config]
config = {_toml_str(config_text)}
out = {_toml_str(out)}
resume = {'true' if resume else 'false'}
overwrite = {'true' if overwrite else 'false'}
node-timeout = {float(node_timeout)!r}
min-nodes = {int(min_nodes)}
result-file = {_toml_str(result_file)}
"""
    atomic_write_text(app_dir / "pyproject.toml", text)
    return app_dir


# ---- processes ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    """The executable ``name`` of this Python environment (Flower's entry points)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise FlowerRunError(f"{name} not found beside {sys.executable} nor on PATH; install "
                                 f"the Flower engine with `pip install 'fedmef-refimpl[flower]'`")
        return found
    return str(path)


def _environ(token: str, home: Path) -> dict:
    env = dict(os.environ)
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_HOME": str(home),
                TOKEN_VAR: token, "PYTHONUNBUFFERED": "1",
                # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp)
                # by name: from this environment, not another one on PATH
                "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")})
    return env


def token_processes(token: str) -> dict[int, tuple]:
    """The live processes whose environment holds ``TOKEN_VAR=token`` (Linux /proc): PID ->
    (start time in clock ticks since boot, command line). A zombie, which has no environment
    left, is not live."""
    needle = f"{TOKEN_VAR}={token}".encode()
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        start = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22 of proc(5)
        out[int(entry.name)] = (start, " ".join(c.decode("utf-8", "replace") for c in cmd[:3]))
    return out


def alive(pid: int, start: int) -> bool:
    """Whether process ``pid`` started at ``start`` (see :func:`token_processes`) is still
    running: not gone, not a zombie, not another process that reuses its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0] != "Z" and int(fields[19]) == start


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class LocalFederation:
    """A SuperLink and SuperNodes on 127.0.0.1 in workspace ``ws`` (module docstring).

    ``node_configs``: one ``--node-config`` string per SuperNode. Use as a context manager:
    :meth:`stop` runs however the block ends. ``seen`` holds every process this federation saw
    (its own children and the token's processes, as :func:`token_processes` describes them),
    for checks after :meth:`stop` (:func:`alive`)."""

    def __init__(self, ws: Path, node_configs: list[str], log=print):
        require_flwr()
        self.ws, self.node_configs, self.log = Path(ws), list(node_configs), log
        self.token = secrets.token_hex(16)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.seen: dict[int, tuple] = {}
        self.port = 0

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, cmd: list, home: Path, cwd: Path | None = None
               ) -> subprocess.Popen:
        home.mkdir(parents=True, exist_ok=True)
        logs = self.ws / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as fh:
            # a session of its own: Ctrl-C reaches this process only, which stops the rest
            p = subprocess.Popen(cmd, env=_environ(self.token, home), cwd=cwd or self.ws,
                                 stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.procs.append((name, p))
        self._saw()
        return p

    def _saw(self) -> dict:
        now = token_processes(self.token)
        self.seen.update(now)
        return now

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.ws.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        link = self._spawn("superlink", [
            _bin("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(self.port)], self.ws / "superlink")
        self._wait_ready(link, timeout)
        for j, node_config in enumerate(self.node_configs):
            self._spawn(f"supernode-{j}", [
                _bin("flower-supernode"), "--insecure", "--superlink", self.address,
                "--host", "127.0.0.1", "--port", str(_free_port()),
                "--node-config", node_config], self.ws / f"supernode-{j}")
        home = self.ws / "cli"
        home.mkdir(parents=True, exist_ok=True)
        atomic_write_text(home / "config.toml", f'[superlink]\ndefault = "{_CONNECTION}"\n\n'
                          f'[superlink.{_CONNECTION}]\naddress = "{self.address}"\n'
                          f'insecure = true\n')

    def _wait_ready(self, link: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if link.poll() is not None:
                raise FlowerRunError(f"the SuperLink exited at start (code {link.returncode}); "
                                     f"see {self.ws / 'logs' / 'superlink.log'}")
            try:
                with urllib.request.urlopen(f"http://{self.address}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise FlowerRunError(f"the SuperLink did not answer on {self.address} within "
                             f"{timeout:g} s; see {self.ws / 'logs' / 'superlink.log'}")

    def check_alive(self) -> None:
        """FlowerRunError when the SuperLink has exited. (A SuperNode that exits is the
        ServerApp's to report: it names the client and the round that needed it.) Records the
        processes Flower started meanwhile in ``seen``."""
        self._saw()
        for name, p in self.procs:
            if name == "superlink" and p.poll() is not None:
                raise FlowerRunError(f"the {name} process (PID {p.pid}) exited with code "
                                     f"{p.returncode}; see {self.ws / 'logs' / (name + '.log')}")

    def flwr(self, *args, stream=None) -> subprocess.Popen:
        """Start the ``flwr`` CLI with this federation's connection (``FLWR_HOME`` = ws/cli)."""
        cmd = [_bin("flwr"), *args]
        p = subprocess.Popen(cmd, env=_environ(self.token, self.ws / "cli"), cwd=self.ws,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(("flwr", p))
        self._saw()
        return p

    def stop(self, grace: float = 15.0) -> None:
        """Stop every process of this federation by PID (module docstring) and wait for them."""
        self._saw()
        order = [p for name, p in self.procs if name == "flwr"] + \
                [p for name, p in self.procs if name.startswith("supernode")] + \
                [p for name, p in self.procs if name == "superlink"]
        for p in order:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace
        for p in order:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = self._running()
            if not left:
                break
            _signal(left, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self._running():
                time.sleep(0.05)
        left = self._running()
        if left:
            raise FlowerRunError(f"processes {sorted(left)} of the Flower federation did not "
                                 f"stop")

    def _running(self) -> list[int]:
        """This federation's processes still running: every process it saw (the token's, swept
        again now), by PID and start time (:func:`alive`; a reused PID is another process). Not
        only the sweep's: a process that is exiting has already given up its environment, so the
        sweep no longer finds it, but it runs until the kernel reaps it."""
        self._saw()
        return [pid for pid, (start, _) in self.seen.items() if alive(pid, start)]


# ---- running -----------------------------------------------------------------------------------
def _relay(p: subprocess.Popen, log, sink: Path, seen: list) -> None:
    with open(sink, "ab") as fh:
        for raw in p.stdout:
            fh.write(raw)
            fh.flush()
            line = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip()
            seen.append(line)
            if line.strip() and not _BARE.fullmatch(line):
                log(line)


def _submit_and_wait(fed_flwr, app_dir: Path, ws: Path, log, check=None) -> int:
    """``flwr run APP CONNECTION --stream``: submit, relay the log until the run ends; the run
    id. ``check()`` is called every second while waiting (it raises when the federation
    broke)."""
    p = fed_flwr("run", str(app_dir), _CONNECTION, "--stream")
    seen: list = []
    (ws / "logs").mkdir(parents=True, exist_ok=True)
    relay = threading.Thread(target=_relay, args=(p, log, ws / "logs" / "run.log", seen),
                             daemon=True)
    relay.start()
    while p.poll() is None:
        if check is not None:
            check()
        time.sleep(1.0)
    relay.join(5.0)
    run_id = next((int(m.group(1)) for line in seen
                   if (m := re.search(r"Successfully started run (\d+)", line))), None)
    if run_id is None:
        raise FlowerRunError(f"`flwr run` did not start the run (exit code {p.returncode}): "
                             + " / ".join(x for x in seen[-5:] if x.strip()))
    return run_id


def _status(fed_flwr, run_id: int) -> str:
    p = fed_flwr("ls", _CONNECTION, "--run-id", str(run_id), "--format", "json")
    text, _ = p.communicate(timeout=120)
    try:
        runs = json.loads(text.decode("utf-8", "replace")).get("runs", [])
        r = runs[0]
        return f"status {r.get('status')}: {r.get('status-details') or 'no details'}"
    except (ValueError, IndexError, AttributeError):
        return "its status could not be read"


def _where(out: Path, resume: bool) -> str:
    cps = list_checkpoints(out / "checkpoints") if out.is_dir() else []
    if cps:
        return f"`fedmef run --resume {out}` continues from round {cps[-1][0]}"
    if resume:
        return f"`fedmef run --resume {out}` starts it from its first round"
    return f"no round finished; {out} holds no new run"


def _sweep_workspaces(out: Path) -> None:
    """Remove the Flower workspaces of earlier runs into ``out`` whose process has ended (kept
    for their logs after a failure)."""
    if not out.parent.is_dir():
        return
    for p in out.parent.iterdir():
        m = _STALE.fullmatch(p.name)
        if m is None or m["name"] != out.name or not p.is_dir():
            continue
        try:
            os.kill(int(m["pid"]), 0)
            continue  # its launcher is still running
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            continue


def run_local(config_text: str | None, out, *, resume: bool = False, overwrite: bool = False,
              supernodes: str = "slots", num_clients: int, clients_per_round: int,
              node_timeout: float = 120.0, log=print) -> dict:
    """A FedMef run on a Flower federation started here on 127.0.0.1 (module docstring);
    returns the run's summary. ``config_text``: the resolved configuration as TOML (None with
    ``resume``: the run directory has it). Errors and Ctrl-C stop every process first."""
    from ..runner import RunInterrupted

    out = Path(os.path.abspath(out))
    if resume:
        check_resumable(out)
    else:
        check_target(out, overwrite)  # fail before any process starts; the run checks again
    if supernodes == "slots":
        nodes = [f"slot={j} num-partitions={num_clients}" for j in range(clients_per_round)]
    elif supernodes == "partitions":
        nodes = [f"partition-id={k} num-partitions={num_clients}" for k in range(num_clients)]
    else:
        raise ValueError(f"--supernodes must be 'slots' or 'partitions', received "
                         f"{supernodes!r}")
    _sweep_workspaces(out)
    ws = out.parent / f".{out.name}.flower-{os.getpid()}-{secrets.token_hex(4)}"
    result = ws / "result.json"
    app = write_app(ws / "app", config_text=config_text or "", out=str(out), resume=resume,
                    overwrite=overwrite, node_timeout=node_timeout, min_nodes=len(nodes),
                    result_file=str(result))
    log(f"Flower: a SuperLink and {len(nodes)} SuperNode(s) ({supernodes}) on 127.0.0.1; "
        f"workspace {ws}")
    ok = False
    try:
        with LocalFederation(ws, nodes, log) as fed:
            run_id = _submit_and_wait(fed.flwr, app, ws, log, fed.check_alive)
            if not result.exists():
                raise FlowerRunError(f"the Flower run {run_id} ended without a result "
                                     f"({_status(fed.flwr, run_id)}); {_where(out, resume)}")
        outcome = json.loads(result.read_text("utf-8"))
        if not outcome["ok"]:
            raise FlowerRunError(f"{outcome['error']}; {_where(out, resume)}")
        ok = True
        return outcome["summary"]
    except KeyboardInterrupt:
        msg = f"interrupted; {_where(out, resume)}"
        log(msg)
        raise RunInterrupted(msg) from None
    except FlowerRunError as e:
        raise FlowerRunError(f"{e} (Flower logs: {ws / 'logs'})") from None
    finally:
        if ok:
            shutil.rmtree(ws, ignore_errors=True)


def submit(config_text: str | None, out: str, superlink: str, *, insecure: bool = False,
           root_certificates: str | None = None, resume: bool = False,
           overwrite: bool = False, node_timeout: float = 120.0, min_nodes: int = 1,
           log=print) -> str:
    """Submit a FedMef run to the SuperLink at ``superlink`` (its Control API, ``HOST:PORT``),
    relay its log until it ends, and return its final status line. ``out`` is the run
    directory on the SuperLink's machine (absolute)."""
    require_flwr()
    if not Path(out).is_absolute():
        raise ValueError(f"--out {out!r}: with --superlink the run directory is on the "
                         f"SuperLink's machine; give it as an absolute path there")
    if not insecure and not root_certificates:
        raise ValueError("--superlink needs --root-certificates CA.pem (TLS, the default of a "
                         "SuperLink) or --insecure (a SuperLink started with --insecure)")
    import tempfile

    ws = Path(tempfile.mkdtemp(prefix="fedmef-flower-"))
    try:
        app = write_app(ws / "app", config_text=config_text or "", out=out, resume=resume,
                        overwrite=overwrite, node_timeout=node_timeout, min_nodes=min_nodes)
        home = ws / "cli"
        home.mkdir()
        conn = f'[superlink]\ndefault = "{_CONNECTION}"\n\n[superlink.{_CONNECTION}]\n' \
               f'address = {_toml_str(superlink)}\n'
        conn += ("insecure = true\n" if insecure else
                 f"root-certificates = {_toml_str(str(Path(root_certificates).resolve()))}\n")
        atomic_write_text(home / "config.toml", conn)
        token = secrets.token_hex(16)
        children: list = []

        def fed_flwr(*args):
            p = subprocess.Popen([_bin("flwr"), *args], env=_environ(token, home), cwd=ws,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True)
            children.append(p)
            return p

        try:
            run_id = _submit_and_wait(fed_flwr, app, ws, log)
            status = _status(fed_flwr, run_id)
        except KeyboardInterrupt:
            from ..runner import RunInterrupted

            msg = ("stopped following the run; it goes on on the SuperLink (see it with `flwr "
                   "ls`, stop it with `flwr stop RUN_ID`, on a connection to the SuperLink)")
            log(msg)
            raise RunInterrupted(msg) from None
        finally:
            for p in children:
                if p.poll() is None:
                    p.terminate()
                    p.wait()
        if "completed" not in status:
            raise FlowerRunError(f"the Flower run {run_id} did not complete ({status})")
        return f"run {run_id}: {status}"
    finally:
        shutil.rmtree(ws, ignore_errors=True)
