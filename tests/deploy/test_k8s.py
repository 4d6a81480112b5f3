"""deploy/k8s: every overlay renders with kubectl's kustomize, validates against the Kubernetes
schemas offline, and is wired the way the server and the trainer actually work."""

from __future__ import annotations

import re
import shutil
import subprocess

import grpc
import httpx
import kubernetes_validate
import pytest
import yaml
from glider.clients.cli import app as cli_app
from glider.server.settings import Settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.main import get_command

from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["gpu", "cpu-dev"]
KUBERNETES_VERSION = "1.32"  # the oldest minor these manifests claim (native gRPC probes: 1.27+)


def render(path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed: `make install` (deploy/install.sh) installs it"
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {path} failed (kustomize v4+ is needed):\n{done.stderr}"
    return [o for o in yaml.safe_load_all(done.stdout) if o]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    out = {name: render(K8S / "overlays" / name) for name in OVERLAYS}
    out["jobs"] = render(K8S / "jobs")
    return out


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def container(pod_spec: dict, name: str) -> dict:
    (c,) = [c for c in pod_spec["containers"] + pod_spec.get("initContainers", []) if c["name"] == name]
    return c


def container_env(objects: list[dict], c: dict) -> dict[str, str]:
    """The environment a container starts with: its ConfigMaps, then its own ``env``."""
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        env.update(one(objects, "ConfigMap", src["configMapRef"]["name"])["data"])
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def settings_of(env: dict[str, str]) -> Settings:
    fields = {k[len("GLIDER_"):].lower(): v for k, v in env.items() if k.startswith("GLIDER_")}
    return Settings(**fields)


def port_number(c: dict, port) -> int:
    if isinstance(port, int):
        return port
    (p,) = [p for p in c["ports"] if p["name"] == port]
    return p["containerPort"]


def expand(arg: str) -> str:
    """Kubernetes' $(VAR) expansion, with stand-in values: only the shape of the options matters."""
    return re.sub(r"\$\((\w+)\)", lambda m: f"x-{m.group(1).lower()}", arg)


def parse_cli(words: list[str]) -> dict:
    """Parse a `glider ...` command line with the real CLI (unknown options, bad values fail)."""
    cmd = get_command(cli_app)
    words = [expand(w) for w in words]
    while words and hasattr(cmd, "commands") and words[0] in cmd.commands:
        cmd = cmd.commands[words.pop(0)]
    ctx = cmd.make_context(cmd.name, list(words))
    return ctx.params


# --- rendering and schemas -----------------------------------------------------------------
@pytest.mark.parametrize("target", OVERLAYS + ["jobs"])
def test_every_object_validates_against_the_kubernetes_schemas(rendered, target):
    kinds = set()
    for obj in rendered[target]:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        kinds.add(obj["kind"])
    expected = {"jobs": {"Job"}}.get(target, {
        "Deployment", "Service", "ConfigMap", "StatefulSet", "PersistentVolumeClaim", "ServiceAccount"})
    assert expected <= kinds


def test_the_validator_rejects_a_broken_manifest(rendered):
    deployment = one(rendered["gpu"], "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = {"no": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    typo = yaml.safe_load(yaml.safe_dump(deployment))
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)


# --- the wiring that matters --------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_is_real_settings_and_ports_match_the_containers(rendered, overlay):
    objects = rendered[overlay]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    server = container(pod, "server")
    config = one(objects, "ConfigMap")["data"]
    unknown = [k for k in config if k.startswith("GLIDER_") and k[7:].lower() not in Settings.model_fields]
    assert not unknown, f"ConfigMap keys the server does not read: {unknown}"
    settings = settings_of(container_env(objects, server))
    assert settings.host == "0.0.0.0" and settings.grpc_enabled
    assert port_number(server, "http") == settings.port
    assert port_number(server, "grpc") == settings.grpc_port
    service = one(objects, "Service", "glider")
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert port_number(server, by_name["http"]["targetPort"]) == settings.port
    assert port_number(server, by_name["grpc"]["targetPort"]) == settings.grpc_port
    assert by_name["grpc"]["appProtocol"] == "grpc"
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    for kind in ("PodDisruptionBudget",) if overlay == "gpu" else ():
        assert one(objects, kind)["spec"]["selector"]["matchLabels"].items() <= labels.items()
    redis_url = settings.redis_url.get_secret_value()
    assert settings.store.value == "redis"
    redis_service = one(objects, "Service", "glider-redis")
    assert redis_url.startswith(f"redis://{redis_service['metadata']['name']}:"
                                f"{redis_service['spec']['ports'][0]['port']}/")


@pytest.mark.integration
def test_probes_hit_endpoints_the_real_server_serves(rendered, vllm_server):
    """The probes' paths and gRPC service, asked of a running server: each must answer healthy."""
    server = container(one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"], "server")
    settings = settings_of(container_env(rendered["gpu"], server))
    probes = {kind: server[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # a startup probe long enough for a large model to load
    start = probes["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 600
    for kind, probe in probes.items():
        if "httpGet" in probe:
            assert port_number(server, probe["httpGet"]["port"]) == settings.port, kind
            r = httpx.get(vllm_server.url + probe["httpGet"]["path"], timeout=10)
            assert r.status_code == 200, (kind, r.text)
        else:
            assert port_number(server, probe["grpc"]["port"]) == settings.grpc_port, kind
            with grpc.insecure_channel(vllm_server.grpc_target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_and_trainer_share_the_registry_and_the_episode_logs(rendered, overlay):
    objects = rendered[overlay]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    server, trainer = container(pod, "server"), container(pod, "trainer")
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    pvcs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    assert set(claims.values()) <= set(pvcs)

    def mount(c: dict, path: str) -> dict:
        (m,) = [m for m in c["volumeMounts"] if m["mountPath"] == path]
        return m

    for c in (server, trainer):
        s = settings_of(container_env(objects, c))
        adapters, episodes = mount(c, str(s.adapters_dir())), mount(c, str(s.episodes_dir()))
        assert claims[adapters["name"]] == "glider-adapters" and claims[episodes["name"]] == "glider-episodes"
        assert episodes["subPathExpr"] == "$(POD_NAME)"  # one folder per pod on the shared volume
        assert any(e["name"] == "POD_NAME" for e in c["env"])
        assert mount(c, "/models")["readOnly"] is True
    assert not mount(trainer, "/var/lib/glider/adapters").get("readOnly")  # it publishes
    assert mount(server, "/var/lib/glider/adapters").get("readOnly")  # the server only reads
    if overlay == "gpu":  # replicas on many nodes share these: ReadWriteMany
        assert all(pvcs[c]["spec"]["accessModes"] == ["ReadWriteMany"] for c in claims.values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_sidecar_runs_a_real_command(rendered, overlay):
    pod = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    trainer = container(pod, "trainer")
    params = parse_cli(["train", *trainer["args"]])  # the image's entrypoint is `glider train`
    assert params["iterations"] == 0 and params["leader_lock"] is True
    assert params["server"] == "http://127.0.0.1:8000"


def test_training_job_launches_accelerate_over_the_gpus_it_requests(rendered):
    job = one(rendered["jobs"], "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    stages = [c["name"] for c in pod.get("initContainers", []) + pod["containers"]]
    assert stages == ["collect", "sft", "orl"]
    for name in ("sft", "orl"):
        c = container(pod, name)
        command = c["command"]
        launch = command.index("accelerate")
        assert command[launch + 1] == "launch"
        nproc = int(next(a.split("=")[1] for a in command if a.startswith("--num_processes=")))
        assert nproc == int(c["resources"]["limits"]["nvidia.com/gpu"])
        module = command.index("-m")
        assert command[module + 1] == "glider.clients.cli"
        parse_cli(command[module + 2:] + c["args"])
    collect = container(pod, "collect")
    assert parse_cli(collect["command"][collect["command"].index("glider") + 1:] + collect["args"])["out"]
    base_claims = {o["metadata"]["name"] for o in rendered["gpu"] if o["kind"] == "PersistentVolumeClaim"}
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v} \
        <= base_claims


def test_gpu_overlay_requests_gpus_and_cpu_dev_none(rendered):
    pod = one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    for name in ("server", "trainer"):
        assert int(container(pod, name)["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert one(rendered["gpu"], "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "glider"
    dev = rendered["cpu-dev"]
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(dev)
    assert one(dev, "Deployment")["spec"]["replicas"] == 1
    assert not [o for o in dev if o["kind"] in ("HorizontalPodAutoscaler", "PodDisruptionBudget")]


@pytest.mark.parametrize("target", OVERLAYS + ["jobs"])
def test_admin_token_is_a_secret_reference_and_pods_are_locked_down(rendered, target):
    objects = rendered[target]
    text = yaml.safe_dump_all(objects)
    assert "GLIDER_ADMIN_TOKEN" not in str([o.get("data") for o in objects if o["kind"] == "ConfigMap"])
    assert not [o for o in objects if o["kind"] == "Secret"], "no secret may be committed"
    for workload in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
            for item in c.get("env", []):
                if item["name"] == "GLIDER_ADMIN_TOKEN":
                    assert "value" not in item
                    assert item["valueFrom"]["secretKeyRef"] == {"name": "glider-admin-token", "key": "token"}
    if target != "jobs":
        server = container(one(objects, "Deployment")["spec"]["template"]["spec"], "server")
        assert any(e["name"] == "GLIDER_ADMIN_TOKEN" for e in server["env"])
    assert "token=" not in text
