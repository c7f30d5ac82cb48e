"""``zoolens mlflow serve``: a local MLflow tracking server that cluster workers log to over HTTP.

On one machine a sqlite file is enough. On a cluster it is not: workers on other
nodes cannot open a sqlite file that lives on the head, and many nodes writing one
file over a network filesystem corrupts it. Every process then logs through an
``mlflow server`` (HTTP); that server alone owns the sqlite store and the artifacts.

The server runs in the foreground in its own process group: Ctrl-C (SIGINT),
SIGTERM or SIGHUP sent to this command is forwarded to the whole server (the
``mlflow`` CLI and its uvicorn workers), which gets a few seconds to stop before it
is killed. Nothing is left running when this command returns.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from zoo.errors import ZoolensError

DEFAULT_ROOT = Path("runs") / "mlflow-server"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0


class ServeError(ZoolensError):
    """The MLflow server cannot be started (port taken, bad host, unwritable directory)."""


def server_command(root: Path, host: str, port: int, workers: int) -> list[str]:
    """The ``mlflow server`` command line: sqlite store and proxied artifacts under ``root`` (absolute)."""
    root = root.resolve()
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]


def tracking_uri(host: str, port: int) -> str:
    """The URI clients use; a wildcard bind is reached locally through 127.0.0.1 (remote nodes use the head's address)."""
    client_host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in client_host:  # a bare IPv6 literal
        client_host = f"[{client_host}]"
    return f"http://{client_host}:{port}"


def check_port_free(host: str, port: int) -> None:
    """Fail with one line when ``host:port`` cannot be bound (taken, or not an address of this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeError(f"cannot resolve --host {host!r}: {e.strerror}") from None
    family, socktype, proto, _, addr = infos[0]
    with socket.socket(family, socktype, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: ignore TIME_WAIT leftovers
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is already in use (another MLflow server?); "
                                 f"choose a free one with --port") from None
            if e.errno == errno.EACCES:
                raise ServeError(f"no permission to bind {host}:{port}; use a port above 1023") from None
            raise ServeError(f"cannot bind {host}:{port}: {e.strerror}") from None


def _prepare_root(root: Path) -> Path:
    root = root.expanduser().resolve()
    try:
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ServeError(f"cannot create server directory {root}: {e.strerror}") from None
    if not os.access(root, os.W_OK):
        raise ServeError(f"server directory {root} is not writable")
    return root


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen, sig: int) -> int:
    """Forward ``sig`` to the server's process group, wait, then kill whatever is left."""
    _signal_group(proc, sig)
    try:
        return proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        return proc.wait()
    finally:
        _signal_group(proc, signal.SIGKILL)  # uvicorn workers or a job runner that outlived the CLI


class _Stop(Exception):
    def __init__(self, sig: int):
        super().__init__(sig)
        self.sig = sig


def serve(port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, root: Path = DEFAULT_ROOT, workers: int = 2) -> int:
    """Run ``mlflow server`` in the foreground until it exits or this process is interrupted."""
    if not 1 <= port <= 65535:
        raise ServeError(f"--port must be between 1 and 65535, got {port}")
    if workers < 1:
        raise ServeError(f"--workers must be at least 1, got {workers}")
    check_port_free(host, port)  # before anything is created: a taken port changes nothing on disk
    root = _prepare_root(Path(root))
    uri = tracking_uri(host, port)
    cmd = server_command(root, host, port, workers)

    print(f"MLflow server: store sqlite:///{root / 'mlflow.db'}, artifacts {root / 'artifacts'}", flush=True)
    print(f"MLFLOW_TRACKING_URI={uri}", flush=True)
    if not _is_loopback(host):
        print(f"warning: listening on {host}: the server has no authentication; keep it on a private network "
              f"(other nodes use http://<this-host-ip>:{port})", file=sys.stderr, flush=True)

    def _raise(signum, _frame):
        raise _Stop(signum)

    # SIGINT too, explicitly: a shell starts background jobs with SIGINT ignored, and `kill -INT` must still stop us.
    previous = {signum: signal.signal(signum, _raise) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    # zoolens uses none of MLflow's server-side GenAI jobs; without them the server is 3 processes, not 10.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    proc: subprocess.Popen | None = None
    try:
        # Its own process group: a terminal's Ctrl-C reaches only us, and we forward it to every server process.
        proc = subprocess.Popen(cmd, cwd=root, env=env, start_new_session=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = False
        while True:
            code = proc.poll()
            if code is not None:
                if not ready:
                    raise ServeError(f"mlflow server exited with code {code} before it was ready "
                                     f"(its output is above)")
                print(f"zoolens: mlflow server exited with code {code}", file=sys.stderr, flush=True)
                return 0 if code == 0 else 1
            if not ready and _healthy(uri):
                ready = True
                print(f"MLflow server ready at {uri} (UI and tracking API); Ctrl-C stops it. "
                      f"Use: export MLFLOW_TRACKING_URI={uri}", flush=True)
            elif not ready and time.monotonic() > deadline:
                raise ServeError(f"mlflow server did not answer {uri}/health within {READY_TIMEOUT_S:.0f}s")
            time.sleep(0.5 if not ready else 1.0)
    except (_Stop, KeyboardInterrupt) as stop:
        sig = getattr(stop, "sig", signal.SIGINT)
        for other in previous:  # a second Ctrl-C must not cut the shutdown short; _stop kills after a timeout
            signal.signal(other, lambda *_: None)
        print(f"zoolens: {signal.Signals(sig).name}: stopping mlflow server", file=sys.stderr, flush=True)
        if proc is not None:
            _stop(proc, signal.SIGINT if sig == signal.SIGINT else signal.SIGTERM)
        return 0
    finally:
        if proc is not None and proc.poll() is None:  # an error above: never leave a server behind
            _stop(proc, signal.SIGTERM)
        elif proc is not None:
            _signal_group(proc, signal.SIGKILL)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    """Entry point for ``zoolens mlflow serve``."""
    return serve(port=args.port, host=args.host, root=Path(args.root), workers=args.workers)
