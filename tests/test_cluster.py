"""cluster/: the files parse and pass the checks their tools apply (Ray's cluster-launcher schema,
Ray's runtime_env, the RayJob's shape), and a job submitted with `ray job submit` and
cluster/runtime_env.yaml trains a student on a separate, token-authenticated Ray head."""

from __future__ import annotations

import copy
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, free_ports

CLUSTER = REPO / "cluster"
BIN = Path(sys.executable).parent
IMAGE = r"REGISTRY/tdmpc-ray:0\.1\.0@sha256:IMAGE_DIGEST"
"""The node image in the cluster files: cluster/Dockerfile's, pinned by a digest placeholder
that docs/cluster.md explains (never a made-up digest)."""


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


# ---------------------------------------------------------------------------------------------
# runtime_env.yaml


def test_runtime_env_is_accepted_by_ray():
    from ray.runtime_env import RuntimeEnv

    spec = _load("runtime_env.yaml")
    env = RuntimeEnv(**spec)
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    # Ray sets these for the job itself; a value here would point jobs at the wrong cluster.
    assert not {"RAY_ADDRESS", "RAY_AUTH_TOKEN"} & set(env["env_vars"])
    # The code travels as --working-dir; dependencies come with the node, not per job.
    assert "working_dir" not in spec and "pip" not in spec and "conda" not in spec


def test_runtime_env_excludes_outputs_but_not_the_package():
    """The excludes are .gitignore patterns, matched the way Ray's packaging matches them."""
    from ray._private.thirdparty.pathspec import PathSpec

    excludes = PathSpec.from_lines("gitwildmatch", _load("runtime_env.yaml")["excludes"])
    package = [p.relative_to(REPO).as_posix() for p in (REPO / "tdmpc_ray").rglob("*.py")]
    package += ["tune/dcoef.yaml", "pyproject.toml", "cluster/runtime_env.yaml"]
    assert "tdmpc_ray/data/layout.py" in package
    assert not [p for p in package if excludes.match_file(p)]
    for path in (
        "runs/x/student.pt",
        "sweeps/dcoef/a",
        "data/mt30/part-00000.parquet",
        "checkpoints/mt30-317M.pt",
        ".git/HEAD",
        ".venv/bin/python",
        "teacher.pt",
    ):
        assert excludes.match_file(path), path


# ---------------------------------------------------------------------------------------------
# gpu-cluster.yaml (Ray cluster launcher)


def test_cluster_launcher_config_passes_rays_schema_and_checks():
    """What `ray up` checks before it calls the cloud: the JSON schema Ray ships, then its
    defaults merged in and the config checks (node types, worker counts, docker)."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load("gpu-cluster.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))

    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu"]["min_wrokers"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_wrokers"):
        jsonschema.validate(broken, schema)


def test_cluster_launcher_config_has_gpu_workers_and_token_auth():
    config = _load("gpu-cluster.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head.get("min_workers") and not head.get("max_workers")
    gpu = [name for name, t in types.items() if t["node_config"]["InstanceType"].startswith("g")]
    assert gpu and all(types[n]["max_workers"] > types[n].get("min_workers", 0) for n in gpu)
    # Every node starts Ray with token auth and gets the token file; the package is installed.
    for cmd in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token ray start" in c for c in config[cmd]), cmd
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # Nodes run the project's image (pinned by digest) and install nothing when they boot.
    assert re.fullmatch(IMAGE, config["docker"]["image"])
    assert not [c for c in config["setup_commands"] if "install" in c]


# ---------------------------------------------------------------------------------------------
# rayjob.yaml (KubeRay) and its image


def _containers(spec: dict) -> list[dict]:
    return spec["template"]["spec"]["containers"]


def test_rayjob_manifest_shape():
    """No KubeRay CRD schema ships with a Python package, so this checks the fields KubeRay
    requires (and the ones this job depends on) by hand."""
    job = _load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    spec = job["spec"]
    assert spec["entrypoint"].startswith("tdmpc-ray sweep /home/ray/tdmpc_ray/tune/dcoef.yaml")
    overrides = dict(arg.split("=", 1) for arg in spec["entrypoint"].split()[3:])
    assert set(overrides) == {"data", "teacher", "storage_path", "max_concurrent_trials"}
    assert all(
        overrides[key].startswith("/mnt/tdmpc/") for key in ("data", "teacher", "storage_path")
    )
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    assert spec["shutdownAfterJobFinishes"] is True

    cluster = spec["rayClusterSpec"]
    import ray

    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token", "secretName": "tdmpc-ray-auth"}
    head = cluster["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    (head_container,) = _containers(head)
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    image = head_container["image"]
    assert re.fullmatch(IMAGE, image)

    groups = cluster["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    for group in groups:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        (container,) = _containers(group)
        assert container["image"] == image
        assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert container["resources"]["requests"] == container["resources"]["limits"]
    # Every pod mounts the shared volume the entrypoint's paths live in.
    for group in [head, *groups]:
        (container,) = _containers(group)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        assert "persistentVolumeClaim" in volumes[mounts["/mnt/tdmpc"]]


def test_rayjob_pods_run_unprivileged_and_expose_only_used_ports():
    cluster = _load("rayjob.yaml")["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        (container,) = pod["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        ports = {p["containerPort"] for p in container.get("ports", [])}
        assert ports <= {6379, 8265}, "10001 is Ray Client's port, which nothing here uses"


def test_rayjob_pod_templates_are_valid_kubernetes():
    """The head and worker pod templates against the Kubernetes API schema, unknown fields
    rejected (kubernetes-validate ships the schemas; skipped where it is not installed)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    cluster = _load("rayjob.yaml")["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "t"},
            "template": group["template"],
        }
        kubernetes_validate.validate(pod_template, "1.33.0", strict=True)


def test_dockerfile_installs_this_package_on_the_matching_ray_image():
    import ray

    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-") and base.endswith("-gpu")
    assert re.search(r"^RUN pip install --no-cache-dir \. ", text, re.M)
    assert re.search(r"^ENV .*\bRAY_USAGE_STATS_ENABLED=0\b", text, re.M)
    assert re.search(r"^USER 1000:100$", text, re.M)  # numeric: runAsNonRoot can check it
    for path in ("pyproject.toml", "tdmpc_ray", "tune"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", text, re.M), path
        assert f"!{path}" in (CLUSTER / "Dockerfile.dockerignore").read_text()


# ---------------------------------------------------------------------------------------------
# A real job on a real (separate) Ray head


def _session_pids(sid: int) -> list[int]:
    """PIDs of the processes in session `sid` (the head's `ray start` and all it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(b")", 1)[1].split()[3]) == sid:
            pids.append(int(entry.name))
    return pids


@dataclass
class Head:
    dashboard: str  # http://127.0.0.1:PORT, the jobs API
    gcs: str  # 127.0.0.1:PORT, what RAY_ADDRESS holds for drivers
    env: dict  # environment of a client that holds the cluster's token
    tmp: Path

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Iterator[Head]:
    """A Ray head of its own (not the session's in-process Ray): its own ports, temp dir and
    token, started in a new session so that exactly its processes can be stopped. Nothing here
    touches os.environ or ~/.ray; `ray stop` is never used (it stops every Ray on the machine)."""
    tmp = tmp_path_factory.mktemp("head")
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TDMPC_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PYTHONUNBUFFERED="1")
    # The job's entrypoint finds `tdmpc-ray` on the PATH of the node, i.e. of this environment.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    gcs, dashboard, *ports = free_ports(9)
    worker_ports = random.Random().randrange(20000, 29000, 1000)  # apart from Ray's 10002-19999
    names = (
        "ray-client-server-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "node-manager-port",
        "object-manager-port",
    )
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        "2",
        "--port",
        str(gcs),
        "--dashboard-port",
        str(dashboard),
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--temp-dir",
        str(tmp / "ray"),
        "--disable-usage-stats",
        "--min-worker-port",
        str(worker_ports),
        "--max-worker-port",
        str(worker_ports + 999),
        *[a for name, port in zip(names, ports, strict=True) for a in (f"--{name}", str(port))],
    ]
    log = (tmp / "head.log").open("w")
    # SIGTERM makes `ray start --block` stop its node; skip the 30 s drain it first waits for.
    process = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
    )
    node = Head(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", env, tmp)
    try:
        deadline = time.time() + 240  # a loaded 2-core machine takes minutes to start a head
        while node.ray("job", "list", "--address", node.dashboard, timeout=60).returncode:
            assert process.poll() is None, (tmp / "head.log").read_text()[-3000:]
            assert time.time() < deadline, (tmp / "head.log").read_text()[-3000:]
            time.sleep(1)
        yield node
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for pid in _session_pids(process.pid):  # whatever outlived it, workers included
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=10)
        log.close()


@pytest.mark.slow
def test_head_requires_the_token(head):
    """Token auth is on: a client without RAY_AUTH_MODE sends no token (401), one with another
    token is refused (403)."""
    env = {k: v for k, v in head.env.items() if k != "RAY_AUTH_MODE"}
    result = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", head.dashboard],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "Missing authentication token" in result.stderr
    wrong = head.tmp / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    result = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", head.dashboard],
        env={**head.env, "RAY_AUTH_TOKEN_PATH": str(wrong)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "Invalid authentication token" in result.stderr


@pytest.mark.slow
def test_submitted_job_trains_a_student(head):
    """`ray job submit --working-dir <repo> --runtime-env cluster/runtime_env.yaml -- tdmpc-ray
    train ...` on the head: the job's driver joins that cluster (RAY_ADDRESS, set by Ray for the
    job) and writes the student where `out` says."""
    data = head.tmp / "episodes"
    # Data made by a CLI verb joining the head through RAY_ADDRESS (no cluster of its own).
    generate = subprocess.run(
        [
            str(BIN / "tdmpc-ray"),
            "data",
            "generate",
            "--tasks",
            "cartpole-balance,walker-walk",
            "--episodes-per-task",
            "3",
            "--max-steps",
            "24",
            str(data),
        ],
        env={**head.env, "RAY_ADDRESS": head.gcs},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert generate.returncode == 0, generate.stderr[-3000:]
    drivers = head.ray("job", "list", "--address", head.dashboard)
    assert "data generate" in drivers.stdout + drivers.stderr

    runs = head.tmp / "runs"
    job_id = f"tdmpc-test-{secrets.token_hex(4)}"
    submit = head.ray(
        "job",
        "submit",
        "--address",
        head.dashboard,
        "--submission-id",
        job_id,
        "--working-dir",
        str(REPO),
        "--runtime-env",
        str(CLUSTER / "runtime_env.yaml"),
        "--no-wait",
        "--",
        "tdmpc-ray",
        "train",
        f"data={data}",
        "steps=20",
        "batch_size=16",
        "checkpoint_every=10",
        "log_every=10",
        f"out={runs}",
        "name=job",
    )
    assert submit.returncode == 0, submit.stderr[-3000:]

    deadline = time.time() + 300
    status = None
    while time.time() < deadline:
        out = head.ray("job", "status", "--address", head.dashboard, job_id)
        found = re.search(
            rf"Job '{job_id}' (succeeded|failed|was stopped)", out.stdout + out.stderr
        )
        if found:
            status = found.group(1)
            break
        time.sleep(3)
    if status != "succeeded":
        if status is None:
            head.ray("job", "stop", "--address", head.dashboard, job_id)
        logs = head.ray("job", "logs", "--address", head.dashboard, job_id)
        pytest.fail(f"job {job_id}: {status or 'timed out'}\n{logs.stdout[-6000:]}")

    # The job's driver trained on the head (RAY_ADDRESS), not on a local Ray of its own.
    actors = head.ray(
        "list",
        "actors",
        "--address",
        head.dashboard,
        "--format",
        "json",
        "--filter",
        "class_name=RayTrainWorker",
    )
    assert actors.returncode == 0 and json.loads(actors.stdout), actors.stderr[-3000:]

    run = runs / "job"
    assert (run / "student.pt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["step"] == 20 and summary["student"] == str(run / "student.pt")
    from tdmpc_ray.model import load_world_model

    assert load_world_model(run / "student.pt").cfg.model_size == 1


def test_commit_comes_from_the_environment_where_the_code_has_no_checkout(tmp_path, monkeypatch):
    from tdmpc_ray.provenance import COMMIT_ENV, git_commit

    assert git_commit(REPO) not in (None, "")
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    assert git_commit(tmp_path) is None
    monkeypatch.setenv(COMMIT_ENV, "abc123")
    assert git_commit(tmp_path) == "abc123"
