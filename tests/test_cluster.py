"""Cluster operation end to end, with real processes on 127.0.0.1 only.

A real Ray head (``ray start --head`` with the dashboard / job server) and a real
MLflow server (``zoolens mlflow serve``) run as subprocesses on free ports picked at
runtime. ``ray job submit --working-dir <repo>`` runs the tiny pipeline on that
cluster, logging over HTTP; the MLflow client then finds the runs and the registered
interpreter, and headless Chromium renders them in the MLflow UI.

Every process started here is killed in teardown (its whole process tree and process
group), even when a test fails; every wait is bounded. This file does not use the
session's ``ray_local`` fixture and never runs ``ray stop`` (that would stop every Ray
instance on the machine); its Ray instance lives in a private ``--temp-dir``, so
``ray.init()`` elsewhere never finds it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: ray, zoolens, and the `python` the job must run
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARTIFACTS = REPO / "test-artifacts"
EXPERIMENT = "zoolens"  # configs/tiny.yaml keeps the default tracking section
REGISTERED = "zoolens-interpreter"
STAGES = {"zoo", "signatures", "interpreter_train", "interpreter_evaluate"}

pytestmark = pytest.mark.timeout(420)


# -- process helpers -----------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (sockets held together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every process started here: the venv first on PATH, no auth, loopback only."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="disabled", TQDM_DISABLE="1",
               RAY_USAGE_STATS_ENABLED="0", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               # Ray turns 127.0.0.1 into the machine's routable address unless clustering across machines is off;
               # with it off, every Ray process (GCS, raylet, dashboard, job driver) binds and dials 127.0.0.1 only.
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.update(extra)
    return env


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgid) for every process, from /proc (Linux)."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if fields[0] == "Z":
            continue  # a zombie is already dead; its parent reaps it
        table[int(d)] = (int(fields[1]), int(fields[2]))
    return table


def alive(pids: list[int]) -> list[int]:
    table = process_table()
    return [p for p in pids if p in table]


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Procs:
    """Processes this test module started; ``kill_all`` ends each one's whole tree and process group."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, grace: float = 15.0, **kw) -> subprocess.Popen:
        fh = open(log, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kw)
        proc._log_fh = fh  # type: ignore[attr-defined]
        proc._grace = grace  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    @staticmethod
    def tree(proc: subprocess.Popen) -> list[int]:
        """Pids of the process, its descendants, and anything else still in its process group (pgid == its pid)."""
        table = process_table()
        found = {pid for pid, (_, pgid) in table.items() if pid == proc.pid or pgid == proc.pid}
        grew = True
        while grew:
            more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
            found |= more
            grew = bool(more)
        return sorted(found)

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        """``sig`` to the whole tree, SIGKILL to whatever outlives the grace period."""
        pids = self.tree(proc)
        signal_all(pids, sig)
        deadline = time.monotonic() + proc._grace  # type: ignore[attr-defined]
        while time.monotonic() < deadline and alive(pids):
            proc.poll()  # reap our direct child
            time.sleep(0.2)
        signal_all(alive(pids) + self.tree(proc), signal.SIGKILL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        proc._log_fh.close()  # type: ignore[attr-defined]

    def kill_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None,
              interval: float = 0.5):
    """Poll ``check()`` until it returns something truthy; fail with the log tail on timeout or early exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{tail(log)}")
        time.sleep(interval)
    pytest.fail(f"{what}: not ready within {timeout:.0f}s\n{tail(log)}")


def tail(log: Path | None, n: int = 4000) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-n:]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


# -- fixtures --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def procs(workdir):
    p = Procs()
    try:
        yield p
    finally:
        p.kill_all()


@pytest.fixture(scope="module")
def workdir():
    """A private directory (not pytest's shared basetemp, which concurrent pytest sessions prune).

    Removed at the end; the processes' logs are copied to test-artifacts/cluster-logs/ first.
    """
    path = Path(tempfile.mkdtemp(prefix="zoolens-cluster-"))
    try:
        yield path
    finally:
        logs = ARTIFACTS / "cluster-logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True, exist_ok=True)
        for log in path.glob("*.log"):
            shutil.copy(log, logs / log.name)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(procs, workdir):
    """``zoolens mlflow serve`` on a free port; yields its tracking URI, root and log."""
    (port,) = free_ports(1)
    root, log = workdir / "mlflow-server", workdir / "mlflow-serve.log"
    proc = procs.start([str(BIN / "zoolens"), "mlflow", "serve", "--port", str(port), "--root", str(root)],
                       log, env=child_env(), cwd=workdir)
    uri = f"http://127.0.0.1:{port}"
    wait_for("zoolens mlflow serve", lambda: "ready at" in tail(log, 100_000) and http_ok(f"{uri}/health"),
             90, proc, log)
    yield {"uri": uri, "port": port, "root": root, "log": log, "proc": proc}


@pytest.fixture(scope="module")
def ray_head(procs, workdir):
    """A real Ray head with the dashboard / job server, 2 CPUs, every port chosen here, private temp dir."""
    temp_dir = Path(tempfile.mkdtemp(prefix="zlray-", dir="/tmp"))  # short: Ray's unix socket paths must fit
    (gcs, dashboard, client, agent_http, agent_grpc, metrics, env_agent, node_mgr, obj_mgr) = free_ports(9)
    log = workdir / "ray-head.log"
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={env_agent}", f"--node-manager-port={node_mgr}",
           f"--object-manager-port={obj_mgr}", "--num-cpus=2", "--num-gpus=0",
           f"--object-store-memory={512 * 1024**2}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        # a throwaway instance: the raylet's graceful drain on SIGTERM takes ~15 s, so it gets 3 s before SIGKILL
        proc = procs.start(cmd, log, grace=3.0, env=child_env(), cwd=workdir)
        address = f"http://127.0.0.1:{dashboard}"
        # the job API answers once the head's dashboard and its agent are up
        wait_for("ray start --head", lambda: http_ok(f"{address}/api/version") and http_ok(f"{address}/api/jobs/"),
                 120, proc, log)
        yield {"address": address, "temp_dir": temp_dir, "log": log, "proc": proc}
    finally:
        # stop Ray before removing its directory (procs' own teardown runs later and finds nothing left)
        for p in list(procs.started):
            if p.args == cmd:
                procs.stop(p)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def submitted(ray_head, mlflow_server, workdir):
    """``ray job submit`` of the tiny pipeline, logging to the MLflow server; returns what it produced."""
    runtime_env = yaml.safe_load((REPO / "cluster" / "deploy" / "runtime_env.yaml").read_text())
    out_dir = workdir / "job-output"
    submission_id = f"zoolens-test-{uuid.uuid4().hex[:8]}"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head["address"], "--submission-id", submission_id,
           "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"excludes": runtime_env["excludes"]}),
           "--", "python", "-m", "cluster", "run", "configs/tiny.yaml", "--output-dir", str(out_dir),
           "--tracking-uri", mlflow_server["uri"], "--no-progress"]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, env=child_env(), cwd=workdir, capture_output=True, text=True, timeout=240,
                             start_new_session=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"ray job submit did not finish in 240s\n{(e.stdout or b'')[-4000:]!r}")
    output = res.stdout + res.stderr
    (workdir / "job-submit.log").write_text(output)
    return {"returncode": res.returncode, "output": output, "submission_id": submission_id, "out_dir": out_dir,
            "seconds": time.perf_counter() - t0}


# -- tests ---------------------------------------------------------------------------
def test_mlflow_serve_port_taken_is_one_line(mlflow_server, workdir):
    """A second server on a taken port fails at once with one line and exit code 2 (and starts nothing)."""
    res = subprocess.run([str(BIN / "zoolens"), "mlflow", "serve", "--port", str(mlflow_server["port"]),
                          "--root", str(workdir / "second-server")],
                         env=child_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines == [f"zoolens: error: port {mlflow_server['port']} on 127.0.0.1 is already in use "
                     "(another MLflow server?); choose a free one with --port"], res.stderr
    assert res.stdout == ""
    assert http_ok(f"{mlflow_server['uri']}/health")  # the first server is untouched


def test_mlflow_serve_bad_host_is_one_line(workdir):
    (port,) = free_ports(1)
    res = subprocess.run([str(BIN / "zoolens"), "mlflow", "serve", "--port", str(port), "--host", "192.0.2.1",
                          "--root", str(workdir / "bad-host")], env=child_env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == f"zoolens: error: cannot bind 192.0.2.1:{port}: Cannot assign requested address"


def test_job_submit_logs_to_mlflow_server(submitted, mlflow_server, ray_head):
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    status = JobSubmissionClient(ray_head["address"]).get_job_status(submitted["submission_id"])
    assert status == JobStatus.SUCCEEDED, f"job ended {status}\n{submitted['output'][-6000:]}"
    assert submitted["returncode"] == 0, submitted["output"][-6000:]
    assert "succeeded" in submitted["output"].lower()

    # the driver ran with the venv's python on the cluster and wrote its outputs where it was told
    report = json.loads((submitted["out_dir"] / "report.json").read_text())
    assert report["tracking_uri"] == mlflow_server["uri"]
    assert set(report["stages"]) == STAGES

    client = MlflowClient(tracking_uri=mlflow_server["uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("zoolens.config") == "tiny"]
    assert len(parents) == 1, [(r.info.run_name, r.data.tags.get("mlflow.parentRunId")) for r in runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_id == report["mlflow_run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.data.tags.get("zoolens.stage") for r in children} == STAGES
    assert all(r.info.status == "FINISHED" for r in children)

    champion = client.get_model_version_by_alias(REGISTERED, "champion")
    assert champion.run_id in {r.info.run_id for r in children}

    # artifacts went through the server's proxy into its --artifacts-destination, not into a local mlruns
    assert "config.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    stored = list((mlflow_server["root"] / "artifacts").rglob("config.json"))
    assert stored, "no artifacts under the server's artifacts directory"
    assert not (submitted["out_dir"] / "mlflow.db").exists()


def test_job_python_is_the_venv(ray_head):
    """A job's bare `python` is the one first on the PATH `ray start` ran with: the venv's, as for the pipeline."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head["address"])
    job = client.submit_job(entrypoint="python -c 'import sys, mlflow; print(\"PYEXE=\" + sys.executable)'")
    done = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    status = wait_for("python job", lambda: (s := client.get_job_status(job)) in done and s, 90)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs
    exe = next(line.removeprefix("PYEXE=") for line in logs.splitlines() if line.startswith("PYEXE="))
    assert Path(exe).parent == BIN, exe


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it in .ci/run: apt-get install chromium)")
def test_mlflow_ui_renders_runs_in_chromium(submitted, mlflow_server, workdir):
    assert submitted["returncode"] == 0, "the job did not succeed; see test_job_submit_logs_to_mlflow_server"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server["uri"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    parent = next(r for r in client.search_runs([exp.experiment_id], max_results=100)
                  if "mlflow.parentRunId" not in r.data.tags)
    url = f"{mlflow_server['uri']}/#/experiments/{exp.experiment_id}/runs"

    def chromium(*args: str, name: str) -> subprocess.CompletedProcess:
        profile = Path(tempfile.mkdtemp(prefix=f"chromium-{name}-", dir=workdir))
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
               "--window-size=1400,900", *args, url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            out, err = "", "timed out"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # chromium's helper processes share its new process group
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    dom = chromium("--dump-dom", name="dom")
    (workdir / "mlflow-ui.html").write_text(dom.stdout)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "mlflow-ui.html").write_text(dom.stdout)
    assert dom.stdout.strip(), f"chromium rendered nothing (rc {dom.returncode}): {dom.stderr[-2000:]}"
    # text nodes of the rendered page (the served HTML is an empty React shell: these come from the API)
    assert f">{EXPERIMENT}<" in dom.stdout, "experiment name not in the rendered MLflow UI"
    assert f">{parent.info.run_name}<" in dom.stdout, f"run {parent.info.run_name!r} not in the rendered MLflow UI"
    assert "matching runs<" in dom.stdout

    shot = ARTIFACTS / "mlflow-ui-runs.png"
    shot.unlink(missing_ok=True)
    res = chromium(f"--screenshot={shot}", name="shot")
    assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot (rc {res.returncode}): {res.stderr[-2000:]}"


def test_mlflow_serve_stops_on_sigint(procs, mlflow_server):
    """Ctrl-C (SIGINT to the command only) stops the whole server: no process of it is left, the port is free."""
    proc = mlflow_server["proc"]
    tree = procs.tree(proc)
    assert len(tree) >= 2  # zoolens, the mlflow CLI and its uvicorn processes
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 15
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(tree), alive(tree)
    assert "SIGINT: stopping mlflow server" in tail(mlflow_server["log"], 100_000)
    assert not http_ok(f"{mlflow_server['uri']}/health")
