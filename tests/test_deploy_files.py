"""The deployment files in cluster/deploy/ are valid for the tools that read them.

Autoscaler YAMLs are checked against Ray's own config schema (``ray/autoscaler/ray-schema.json``)
with jsonschema, then through Ray's ``prepare_config`` / ``validate_config`` (the same merge with the
provider defaults and the same checks ``ray up`` does, no cloud access needed). KubeRay manifests
must parse and carry the fields the CRDs require; ``runtime_env.yaml`` must be a valid Ray runtime
environment whose excludes keep local state out of the uploaded working_dir.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "cluster" / "deploy"
AUTOSCALER = ["aws.yaml", "gcp.yaml"]


def _pin(name: str) -> str:
    """The version pinned for ``name`` in pyproject.toml (``torch==2.13.0`` -> ``2.13.0``)."""
    text = (REPO / "pyproject.toml").read_text()
    m = re.search(rf'"{re.escape(name)}(?:\[[^\]]*\])?==([^"]+)"', text)
    assert m, f"{name} is not pinned in pyproject.toml"
    return m.group(1)


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _commands(cfg: dict, *keys: str) -> list[str]:
    out = []
    for k in keys:
        out += cfg.get(k) or []
    return out


# -- Ray autoscaler ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", AUTOSCALER)
def test_autoscaler_yaml_matches_ray_schema(name, ray_schema):
    cfg = _load(name)
    jsonschema.validate(cfg, ray_schema)

    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(cfg)
    prepared = prepare_config(copy.deepcopy(cfg))  # merged with ray/autoscaler/<provider>/defaults.yaml
    validate_config(prepared)
    jsonschema.validate(prepared, ray_schema)


@pytest.mark.parametrize("name", AUTOSCALER)
def test_autoscaler_yaml_cpu_head_gpu_workers(name):
    cfg = _load(name)
    assert cfg["provider"]["type"] == name.removesuffix(".yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is CPU only"
    gpu_groups = {n: t for n, t in types.items() if n != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1}
    assert len(gpu_groups) >= 2, "at least two GPU worker groups"
    for t in gpu_groups.values():
        assert t.get("min_workers", 0) == 0, "GPU workers scale from zero"
        assert t["max_workers"] <= cfg["max_workers"]


@pytest.mark.parametrize("name", AUTOSCALER)
def test_autoscaler_setup_installs_pinned_package(name):
    cfg = _load(name)
    setup = _commands(cfg, "setup_commands")
    head_setup = _commands(cfg, "head_setup_commands")
    torch_pin, ray_pin = _pin("torch"), _pin("ray")
    assert ray_pin == ray.__version__
    assert any(f'"torch=={torch_pin}"' in c for c in setup), "torch pinned as in pyproject.toml"
    assert any("pip install" in c and "-e ~/zoolens" in c for c in setup), "the package from the synced checkout"
    assert any(f'"ray[default]=={ray_pin}"' in c for c in head_setup), "the head serves ray job submit"
    assert cfg["file_mounts"]["~/zoolens"] == "."
    for excluded in (".venv", "runs", ".git", "*.db"):
        assert excluded in cfg["rsync_exclude"]
    head_start = " ".join(_commands(cfg, "head_start_ray_commands"))
    assert "zoolens mlflow serve --host 0.0.0.0" in head_start
    assert "RAY_AUTH_MODE=token" in head_start
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # every command is one complete shell line (a stray " #" in a plain YAML scalar cuts it short)
    for c in _commands(cfg, "setup_commands", "head_setup_commands", "worker_setup_commands",
                       "head_start_ray_commands", "worker_start_ray_commands", "initialization_commands"):
        shlex.split(c)
    for t in cfg["available_node_types"].values():
        for c in t.get("initialization_commands", []):
            shlex.split(c)


# -- runtime_env.yaml --------------------------------------------------------------------
def test_runtime_env_is_valid_and_excludes_local_state():
    from ray._private.runtime_env.packaging import _get_excludes
    from ray.runtime_env import RuntimeEnv

    text = (DEPLOY / "runtime_env.yaml").read_text()
    env = yaml.safe_load(text)
    RuntimeEnv(**env)  # Ray's own validation of the fields
    for excluded in (".venv", "runs", ".git", "mlruns", "*.db"):
        assert excluded in env["excludes"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http://"), "an mlflow server, never sqlite"
    assert "RAY_AUTH_TOKEN" in text and "RAY_AUTH_TOKEN" not in env.get("env_vars", {}), \
        "the auth note is there, the token is not"

    # Ray's own matcher: what `ray job submit --working-dir .` would leave out of the upload
    excluded = _get_excludes(REPO, env["excludes"])
    for path in (".venv/bin/python", "runs/demo/report.json", ".git/HEAD", "mlruns/0/meta.yaml",
                 "runs/tiny/mlflow.db", "mlflow.db", "cluster/__pycache__/cli.cpython-311.pyc"):
        assert excluded(REPO / path), path
    for path in ("cluster/cli/__init__.py", "configs/tiny.yaml", "zoo/behaviors.py", "pyproject.toml"):
        assert not excluded(REPO / path), path


# -- KubeRay -----------------------------------------------------------------------------
def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kuberay" / name).read_text()) if d]


def _check_pod_template(template: dict, *, gpu: bool) -> dict:
    spec = template["spec"]
    containers = spec["containers"]
    assert containers and all(c["name"] and c["image"] for c in containers)
    c = containers[0]
    limits = c["resources"]["limits"]
    assert (int(limits.get("nvidia.com/gpu", 0)) >= 1) == gpu
    env = {e["name"]: e for e in c.get("env", [])}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "zoolens-ray-auth"
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    assert mounts.get("shared") == "/mnt/shared"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])}
    assert claims["shared"] == "zoolens-shared"
    return c


def _check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    head_container = _check_pod_template(head["template"], gpu=False)
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}
    groups = spec["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
        _check_pod_template(g["template"], gpu=True)
    assert len({g["groupName"] for g in groups}) == len(groups)


def test_kuberay_raycluster_manifest():
    (rc,) = _docs("raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["metadata"]["name"] == "zoolens"
    _check_ray_cluster_spec(rc["spec"])
    assert len(rc["spec"]["workerGroupSpecs"]) >= 2


def test_kuberay_rayjob_manifest():
    (job,) = _docs("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-m", "cluster", "run"]
    assert argv[argv.index("--output-dir") + 1].startswith("/mnt/shared/")
    assert argv[argv.index("--tracking-uri") + 1] == "http://zoolens-mlflow:5000"
    assert spec["shutdownAfterJobFinishes"] is True
    yaml.safe_load(spec["runtimeEnvYAML"])
    _check_ray_cluster_spec(spec["rayClusterSpec"])


def test_kuberay_mlflow_server_and_shared_volume():
    docs = {d["kind"]: d for d in _docs("mlflow.yaml")}
    assert set(docs) == {"PersistentVolumeClaim", "Deployment", "Service"}
    assert docs["PersistentVolumeClaim"]["metadata"]["name"] == "zoolens-shared"
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    dep = docs["Deployment"]["spec"]
    assert dep["replicas"] == 1
    assert dep["selector"]["matchLabels"].items() <= dep["template"]["metadata"]["labels"].items()
    (c,) = dep["template"]["spec"]["containers"]
    assert c["command"][:3] == ["zoolens", "mlflow", "serve"]
    svc = docs["Service"]
    assert svc["metadata"]["name"] == "zoolens-mlflow"
    assert svc["spec"]["selector"].items() <= dep["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["port"] == 5000


def test_dockerfile_pins_torch_and_ray():
    text = (DEPLOY / "Dockerfile").read_text()
    assert f'"torch=={_pin("torch")}"' in text
    assert f"rayproject/ray:{ray.__version__}-" in text
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and "runs" in ignore
