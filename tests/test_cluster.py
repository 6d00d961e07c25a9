"""cluster/: the launcher YAML against Ray's own JSON schema, the KubeRay RayJob / RayService manifests, and the
development head script (started on free loopback ports in its own temp dir, stopped by PID).

Nothing here touches the network beyond 127.0.0.1 or attaches to a Ray it did not start."""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
HEAD_SCRIPT = CLUSTER / "ray-head.sh"
LAUNCHER = CLUSTER / "aws-8xh100.yaml"
RAYJOB = CLUSTER / "kuberay-batch-job.yaml"
RAYSERVICE = CLUSTER / "kuberay-rayservice.yaml"

SERVE_IMPORT_PATH = "wan_dist.serve.deploy:build_app"
# Model names of the HTTP API (../shared/INTERFACES.md).
MODEL_NAMES = {"wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b", "tiny"}


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------------------------------------------
# (a) Ray cluster launcher YAML vs. the JSON schema shipped inside the ray package
# --------------------------------------------------------------------------------------------------------------

def _ray_schema() -> dict:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    assert path.is_file(), f"ray ships no {path}"
    return json.loads(path.read_text())


def _validate_launcher(config: dict) -> dict:
    """What `ray up` does before it talks to the cloud: the JSON schema on the raw file, then Ray's own
    defaults merge (prepare_config) and validate_config (the schema again, plus node-type checks)."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    jsonschema.validate(config, _ray_schema())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_yaml_validates_against_ray_schema():
    config = _load(LAUNCHER)
    prepared = _validate_launcher(config)

    assert config["provider"]["type"] == "aws"
    head = config["head_node_type"]
    workers = {name: t for name, t in config["available_node_types"].items() if name != head}
    gpu = [t for t in workers.values() if t["node_config"]["InstanceType"] == "p5.48xlarge"]
    assert len(gpu) == 1, "one 8 x H100 (p5.48xlarge) worker type"
    (gpu,) = gpu
    assert gpu["resources"]["GPU"] == 8
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]
    assert prepared["available_node_types"][head]["max_workers"] == 0

    # The repo is synced and installed with the development pins.
    assert "." in config["file_mounts"].values()
    mount = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and f"-e {mount}" in setup
    assert f"-c {mount}/requirements/constraints.txt" in setup
    assert (REPO / "requirements" / "constraints.txt").is_file()

    # Token auth set explicitly for every Ray process; the job API stays on the head's loopback.
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=" in start or any("RAY_AUTH_MODE=" in o for o in config["docker"]["run_options"])
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    # The image's Ray is the Ray the client pins.
    pinned = next(line.split("==")[1] for line in (REPO / "requirements" / "constraints.txt").read_text().split()
                  if line.startswith("ray=="))
    for key in ("image", "head_image", "worker_image"):
        if key in config["docker"]:
            assert config["docker"][key].split(":")[1].startswith(pinned + "-py311"), config["docker"][key]


def _break_gpu_type(c):
    c["available_node_types"]["gpu_8xh100"]["resources"]["GPU"] = "eight"


def _break_unknown_key(c):
    c["max_worker"] = 4  # misspelled top-level field


def _break_node_config(c):
    del c["available_node_types"]["gpu_8xh100"]["node_config"]


def _break_head_type(c):
    c["head_node_type"] = "no-such-type"


def _break_min_workers(c):
    c["available_node_types"]["gpu_8xh100"]["min_workers"] = 99


@pytest.mark.parametrize("breaker", [_break_gpu_type, _break_unknown_key, _break_node_config, _break_head_type,
                                     _break_min_workers])
def test_launcher_schema_rejects_broken_copy(breaker):
    """The validation can fail: broken copies of the same file are rejected."""
    import jsonschema

    config = _load(LAUNCHER)
    assert "gpu_8xh100" in config["available_node_types"]
    breaker(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _validate_launcher(config)


# --------------------------------------------------------------------------------------------------------------
# (b) KubeRay RayJob / RayService
# --------------------------------------------------------------------------------------------------------------
# Field names of the ray.io/v1 CRDs (KubeRay master, 2026; spec levels only). An unknown name here is almost
# always a typo that Kubernetes would silently prune. With KUBERAY_CRD_DIR pointing at a folder holding
# ray.io_rayjobs.yaml / ray.io_rayservices.yaml (ray-operator/config/crd/bases of a KubeRay checkout), the full
# OpenAPI schemas are checked too (test_kuberay_against_crd_schema).
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
    "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode",
    "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}
RAYSERVICE_SPEC_FIELDS = {
    "deploymentUnhealthySecondThreshold", "excludeHeadPodFromServeSvc", "managedBy", "rayClusterConfig",
    "rayClusterDeletionDelaySeconds", "serveConfigV2", "serveService", "serviceUnhealthySecondThreshold", "suspend",
    "upgradeStrategy",
}
RAYCLUSTER_SPEC_FIELDS = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
    "headServiceAnnotations", "historyServerOptions", "managedBy", "networkPolicy", "rayVersion", "suspend",
    "tlsOptions", "upgradeStrategy", "workerGroupSpecs",
}
HEAD_GROUP_FIELDS = {"enableIngress", "headService", "ingressOptions", "labels", "rayStartParams", "resources",
                     "serviceType", "template"}
WORKER_GROUP_FIELDS = {"groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts",
                       "priority", "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
AUTH_MODES = {"disabled", "token"}


def _unknown(obj: dict, allowed: set[str], where: str) -> list[str]:
    return [f"{where}: unknown field {k!r}" for k in sorted(set(obj) - allowed)]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _gpus(container: dict) -> tuple[int, int]:
    res = container.get("resources", {})
    limit = int(str(res.get("limits", {}).get("nvidia.com/gpu", 0)))
    request = int(str(res.get("requests", {}).get("nvidia.com/gpu", limit)))
    return limit, request


def _check_ray_cluster(spec: dict, where: str) -> list[str]:
    problems = _unknown(spec, RAYCLUSTER_SPEC_FIELDS, where)
    if "headGroupSpec" not in spec:
        return problems + [f"{where}: no headGroupSpec"]
    auth = spec.get("authOptions", {}).get("mode")
    if auth is not None and auth not in AUTH_MODES:
        problems.append(f"{where}.authOptions.mode {auth!r} not in {sorted(AUTH_MODES)}")
    head = spec["headGroupSpec"]
    groups = [("headGroupSpec", head, HEAD_GROUP_FIELDS)] + [
        (f"workerGroupSpecs[{i}]", g, WORKER_GROUP_FIELDS) for i, g in enumerate(spec.get("workerGroupSpecs", []))]
    images = set()
    saw_auth_env = False
    for name, group, allowed in groups:
        w = f"{where}.{name}"
        problems += _unknown(group, allowed, w)
        params = group.get("rayStartParams", {})
        problems += [f"{w}.rayStartParams.{k}: must be a string, got {type(v).__name__}"
                     for k, v in params.items() if not isinstance(v, str)]
        containers = group.get("template", {}).get("spec", {}).get("containers", [])
        if not containers:
            problems.append(f"{w}: no containers")
            continue
        ray_container = containers[0]  # KubeRay's Ray container is the first one
        images.add(ray_container.get("image"))
        limit, request = _gpus(ray_container)
        if limit != request:
            problems.append(f"{w}: nvidia.com/gpu request {request} != limit {limit}")
        if "num-gpus" in params and int(params["num-gpus"]) != limit:
            problems.append(f"{w}: rayStartParams num-gpus {params['num-gpus']} != nvidia.com/gpu {limit}")
        env = _env(ray_container)
        if "RAY_AUTH_MODE" in env:
            saw_auth_env = True
            value = env["RAY_AUTH_MODE"].get("value")
            if value not in AUTH_MODES or (auth is not None and value != auth):
                problems.append(f"{w}: RAY_AUTH_MODE={value!r} disagrees with authOptions.mode={auth!r}")
        elif auth is None:
            problems.append(f"{w}: neither RAY_AUTH_MODE nor authOptions.mode is set")
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if key in env and "secretKeyRef" not in env[key].get("valueFrom", {}):
                problems.append(f"{w}: {key} must come from a Secret (valueFrom.secretKeyRef)")
        if name == "headGroupSpec":
            if limit:
                problems.append(f"{w}: the head requests GPUs")
            continue
        for key in ("groupName", "minReplicas", "maxReplicas"):
            if key not in group:
                problems.append(f"{w}: missing required {key}")
        lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 0)
        if not lo <= group.get("replicas", lo) <= hi:
            problems.append(f"{w}: replicas not within [minReplicas, maxReplicas]")
        if limit != 8:
            problems.append(f"{w}: worker pods must request nvidia.com/gpu: 8, got {limit}")
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if key not in env:
                problems.append(f"{w}: no {key} env (from a Secret)")
    if len(images) != 1:
        problems.append(f"{where}: head and workers use different images {sorted(map(str, images))}")
    if not saw_auth_env and auth is None:
        problems.append(f"{where}: RAY_AUTH_MODE is set nowhere")
    return problems


def check_rayjob(doc: dict) -> list[str]:
    problems = []
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != "RayJob":
        problems.append(f"apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')} != ray.io/v1/RayJob")
    if not doc.get("metadata", {}).get("name"):
        problems.append("metadata.name missing")
    spec = doc.get("spec", {})
    problems += _unknown(spec, RAYJOB_SPEC_FIELDS, "spec")
    argv = shlex.split(spec.get("entrypoint", ""))
    if argv[:3] != ["python", "-m", "wan_dist.cli.batch"]:
        problems.append(f"entrypoint {argv[:3]} is not `python -m wan_dist.cli.batch`")
    overrides = dict(a.split("=", 1) for a in argv[3:] if "=" in a)
    for key in ("manifest", "output"):
        if not overrides.get(key, "").startswith("s3://"):
            problems.append(f"entrypoint has no {key}=s3://...")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes is not true")
    if not isinstance(spec.get("ttlSecondsAfterFinished", 0), int) or spec.get("ttlSecondsAfterFinished", 0) < 0:
        problems.append("ttlSecondsAfterFinished must be a non-negative integer")
    if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
        problems.append(f"submissionMode {spec.get('submissionMode')!r} not in {sorted(SUBMISSION_MODES)}")
    if spec.get("entrypointNumGpus", 0):
        problems.append("entrypointNumGpus > 0 takes a GPU away from the render groups")
    if "runtimeEnvYAML" in spec and not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict):
        problems.append("runtimeEnvYAML is not a YAML mapping")
    if "rayClusterSpec" not in spec:
        problems.append("no rayClusterSpec")
    else:
        problems += _check_ray_cluster(spec["rayClusterSpec"], "spec.rayClusterSpec")
    return problems


def check_rayservice(doc: dict) -> list[str]:
    from ray.serve.schema import ServeDeploySchema

    problems = []
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != "RayService":
        problems.append(f"apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')} != ray.io/v1/RayService")
    spec = doc.get("spec", {})
    problems += _unknown(spec, RAYSERVICE_SPEC_FIELDS, "spec")
    if not isinstance(spec.get("serveConfigV2"), str):
        return problems + ["serveConfigV2 must be a YAML string"]
    serve = yaml.safe_load(spec["serveConfigV2"])
    try:
        ServeDeploySchema.model_validate(serve)  # Ray Serve's own config schema (what `serve deploy` accepts)
    except Exception as e:  # pydantic.ValidationError
        problems.append(f"serveConfigV2 fails Ray's ServeDeploySchema: {e}")
        return problems
    apps = serve.get("applications", [])
    ours = [a for a in apps if a.get("import_path") == SERVE_IMPORT_PATH]
    if len(ours) != 1:
        problems.append(f"no single application with import_path {SERVE_IMPORT_PATH}")
    else:
        app = ours[0]
        if app.get("route_prefix") != "/":
            problems.append(f"route_prefix {app.get('route_prefix')!r} != '/'")
        models = (app.get("args") or {}).get("models") or []
        if not models or not set(models) <= MODEL_NAMES:
            problems.append(f"args.models {models} not a non-empty subset of {sorted(MODEL_NAMES)}")
    port = (serve.get("http_options") or {}).get("port", 8000)
    if "rayClusterConfig" not in spec:
        return problems + ["no rayClusterConfig"]
    problems += _check_ray_cluster(spec["rayClusterConfig"], "spec.rayClusterConfig")
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    if not any(p.get("containerPort") == port and p.get("name") == "serve" for p in head.get("ports", [])):
        problems.append(f"head container does not expose the Serve port {port} as 'serve'")
    return problems


def test_rayjob_manifest():
    assert check_rayjob(_load(RAYJOB)) == []


def test_rayservice_manifest():
    assert check_rayservice(_load(RAYSERVICE)) == []


def _mutate(doc, path, value=None, delete=False):
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


RC = ["spec", "rayClusterSpec"]
WORKER = RC + ["workerGroupSpecs", 0]
WORKER_C = WORKER + ["template", "spec", "containers", 0]


@pytest.mark.parametrize("path,value,delete", [
    (["spec", "shutdownAfterJobFinish"], True, False),                          # misspelled field
    (["spec", "entrypoint"], "python -m wan_dist.cli.batch manifest=s3://b/m.parquet", False),  # no output=
    (["spec", "entrypoint"], "python jobs/run.py manifest=s3://b/m output=s3://b/o", False),
    (WORKER + ["rayStartParams", "num-gpus"], "4", False),                       # disagrees with nvidia.com/gpu 8
    (WORKER + ["rayStartParams", "num-gpus"], 8, False),                         # not a string
    (WORKER_C + ["resources", "limits", "nvidia.com/gpu"], 4, False),
    (WORKER_C + ["env", 0, "value"], "disabled", False),                         # RAY_AUTH_MODE vs authOptions
    (RC + ["authOptions", "mode"], "tokens", False),
    (["spec", "submissionMode"], "K8sMode", False),
    (WORKER + ["maxReplicas"], None, True),
    (["kind"], "RayCluster", False),
])
def test_rayjob_checks_can_fail(path, value, delete):
    doc = _load(RAYJOB)
    assert doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"][0][
        "name"] == "RAY_AUTH_MODE"
    assert check_rayjob(_mutate(doc, path, value, delete)) != []


@pytest.mark.parametrize("serve_config", [
    "applications:\n- name: x\n  route_prefix: /\n  import_path: wan_dist.serve.other:app\n  args: {models: [tiny]}\n",
    "applications:\n- name: x\n  route_prefix: /\n  args: {models: [tiny]}\n",        # no import_path
    "applications:\n- name: x\n  route_prefix: /api\n  import_path: wan_dist.serve.deploy:build_app\n"
    "  args: {models: [tiny]}\n",
    "applications:\n- name: x\n  route_prefix: /\n  import_path: wan_dist.serve.deploy:build_app\n"
    "  args: {models: [wan-t2v]}\n",                                                       # unknown model name
    "applications: [\n",                                                                   # not YAML
])
def test_rayservice_checks_can_fail(serve_config):
    doc = _load(RAYSERVICE)
    doc["spec"]["serveConfigV2"] = serve_config
    try:
        problems = check_rayservice(doc)
    except yaml.YAMLError:
        return
    assert problems != []


def test_serve_import_path_names_the_builder():
    """Once wan_dist/serve/deploy.py exists it must define build_app (checked without importing Ray Serve)."""
    module, _, attr = SERVE_IMPORT_PATH.partition(":")
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.exists():
        pytest.skip(f"{path.relative_to(REPO)} not written yet")
    names = {n.name for n in ast.parse(path.read_text()).body
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    names |= {t.id for n in ast.parse(path.read_text()).body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name)}
    assert attr in names


def _strict(schema):
    """A CRD's OpenAPI schema with unknown fields rejected (Kubernetes prunes them silently)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if k != "description"}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.mark.parametrize("manifest,crd", [(RAYJOB, "ray.io_rayjobs.yaml"), (RAYSERVICE, "ray.io_rayservices.yaml")])
def test_kuberay_against_crd_schema(manifest, crd):
    crd_dir = os.environ.get("KUBERAY_CRD_DIR")
    if not crd_dir:
        pytest.skip("set KUBERAY_CRD_DIR to KubeRay's ray-operator/config/crd/bases to check the full CRD schema")
    import jsonschema

    doc = _load(Path(crd_dir) / crd)
    (version,) = [v for v in doc["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    manifest_doc = _load(manifest)
    jsonschema.validate(manifest_doc, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_mutate(manifest_doc, ["spec", "no_such_field"], 1), schema)


# --------------------------------------------------------------------------------------------------------------
# (c) the development head script
# --------------------------------------------------------------------------------------------------------------

def _free_ports(n: int) -> list[int]:
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


def _run_script(verb: str, env: dict, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(HEAD_SCRIPT), verb], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _head_env(head_dir: str, **overrides) -> dict:
    gcs, dash, client, metrics, agent = _free_ports(5)
    env = {
        **os.environ,
        "RAY_HEAD_DIR": head_dir,
        "RAY_HEAD_PORT": str(gcs),
        "RAY_DASHBOARD_PORT": str(dash),
        "RAY_CLIENT_PORT": str(client),
        "RAY_METRICS_PORT": str(metrics),
        "RAY_DASHBOARD_AGENT_PORT": str(agent),
        "RAY_HEAD_CPUS": "2",
        "RAY_OBJECT_STORE_BYTES": str(100 * 2**20),
        "RAY_AUTH_MODE": "disabled",
        "RAY_START_TIMEOUT_S": "100",
        "RAY_STOP_GRACE_S": "15",
    }
    env.pop("RAY_ADDRESS", None)
    env.update(overrides)
    return env


def _rmtree(path) -> None:
    """Ray processes that are still exiting may write a last log line while the tree is removed: retry."""
    for _ in range(10):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a reaped-later child of init counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@contextlib.contextmanager
def dev_ray_head(**env_overrides):
    """Starts cluster/ray-head.sh on free ports in a short temp dir under /tmp; yields
    (dashboard address, env, head dir); always stops it. Reusable by end-to-end tests:
    `with dev_ray_head() as (address, env, _): subprocess.run(["ray", "job", "submit", "--address", address, ...],
    env=env)`."""
    head_dir = tempfile.mkdtemp(prefix="wdr-", dir="/tmp")  # short: Ray's unix socket paths live under it
    env = _head_env(head_dir, **env_overrides)
    try:
        started = _run_script("start", env)
        assert started.returncode == 0, f"start failed:\n{started.stdout}\n{started.stderr}"
        last = started.stdout.strip().splitlines()[-1]
        assert last.startswith("export RAY_ADDRESS="), last
        yield last.split("=", 1)[1], env, Path(head_dir)
    finally:
        try:
            if (Path(head_dir) / "head.pid").exists():
                _run_script("stop", env, timeout=90)
        finally:
            _rmtree(head_dir)


needs_linux_ps = pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("ps") is None,
                                    reason="the dev head script needs Linux and ps")


@needs_linux_ps
def test_head_script_syntax():
    assert subprocess.run(["bash", "-n", str(HEAD_SCRIPT)]).returncode == 0


@needs_linux_ps
def test_head_script_refuses_busy_port(tmp_path):
    """A port already taken (e.g. by another Ray) is reported before anything starts."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        head_dir = tempfile.mkdtemp(prefix="wdr-", dir="/tmp")
        try:
            env = _head_env(head_dir, RAY_DASHBOARD_PORT=str(busy.getsockname()[1]))
            result = _run_script("start", env, timeout=30)
            assert result.returncode != 0
            assert "already in use" in result.stderr
            assert not (Path(head_dir) / "head.pid").exists()
            status = _run_script("status", env, timeout=30)
            assert status.returncode == 3 and "not running" in status.stdout
        finally:
            _rmtree(head_dir)


@needs_linux_ps
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_head_script_start_status_stop():
    with dev_ray_head() as (address, env, head_dir):
        dash_port = env["RAY_DASHBOARD_PORT"]
        assert address == f"http://127.0.0.1:{dash_port}"
        pids = [int(p) for p in (head_dir / "head.pid").read_text().split()]
        assert len(pids) >= 3, pids  # leader (ray start --block), gcs_server, raylet, dashboard, ...
        assert all(_alive(p) for p in pids[:1])
        assert str(head_dir) in Path(f"/proc/{pids[0]}/cmdline").read_text().replace("\0", " ")

        # The dashboard that answers is this head's (same session), not another Ray's.
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(f"{address}/api/version", timeout=10) as r:
            version = json.load(r)
        assert version["session_name"] == os.path.basename(os.readlink(head_dir / "session_latest"))
        recorded = dict(line.split("=", 1) for line in (head_dir / "head.env").read_text().split())
        assert recorded["RAY_ADDRESS"] == address

        # Ray's own client reaches the GCS at the recorded port (explicit address: never another cluster).
        ray_bin = REPO / ".venv" / "bin" / "ray"
        ray_cmd = str(ray_bin) if ray_bin.exists() else "ray"
        # The autoscaler publishes its first status a few seconds after the head is up: poll.
        deadline = time.monotonic() + 120  # slower on a loaded machine; the loop ends as soon as it shows
        while True:
            status = subprocess.run([ray_cmd, "status", "--address", f"127.0.0.1:{env['RAY_HEAD_PORT']}"],
                                    env=env, capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stderr
            if "2.0 CPU" in status.stdout or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert "2.0 CPU" in status.stdout, status.stdout

        # Idempotent start; status and address.
        again = _run_script("start", env, timeout=60)
        assert again.returncode == 0 and "already running" in again.stderr
        assert again.stdout.strip().splitlines()[-1] == f"export RAY_ADDRESS={address}"
        assert [int(p) for p in (head_dir / "head.pid").read_text().split()] == pids
        st = _run_script("status", env, timeout=30)
        assert st.returncode == 0 and st.stdout.startswith("running"), st.stdout
        assert _run_script("address", env, timeout=30).stdout.strip() == address

        stopped = _run_script("stop", env, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        still = [p for p in pids if _alive(p)]
        assert still == [], f"recorded processes still alive after stop: {still}"
        assert not (head_dir / "head.pid").exists()
        st = _run_script("status", env, timeout=30)
        assert st.returncode == 3 and "not running" in st.stdout
        assert _run_script("stop", env, timeout=30).returncode == 0  # stopping twice is fine


def test_rayservice_args_are_serve_settings():
    """The RayService's build_app args parse into ServeSettings (the fields build_app really takes)."""
    from wan_dist.serve.settings import settings_from_dict

    serve_config = yaml.safe_load(yaml.safe_load((REPO / "cluster" / "kuberay-rayservice.yaml").read_text())
                                  ["spec"]["serveConfigV2"])
    app = next(a for a in serve_config["applications"] if a.get("import_path") == SERVE_IMPORT_PATH)
    settings = settings_from_dict(app["args"])
    assert settings.models == ("t2v-a14b", "i2v-a14b") and settings.renderer.group.use_gpus is True
    assert settings.renderer.group.world_size == 1 and settings.renderer.autoscaling.max_replicas == 8
    with pytest.raises(ValueError, match="gpus_per_replica"):
        settings_from_dict({**app["args"], "gpus_per_replica": 8})


def test_serve_config_file_is_valid_for_serve_and_build_app():
    """cluster/serve-config.yaml passes Ray Serve's own schema and its args parse into ServeSettings."""
    from ray.serve.schema import ServeDeploySchema

    from wan_dist.serve.settings import settings_from_dict

    config = yaml.safe_load((REPO / "cluster" / "serve-config.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == SERVE_IMPORT_PATH and config["http_options"]["host"] == "127.0.0.1"
    assert settings_from_dict(app["args"]).models == ("tiny",)
