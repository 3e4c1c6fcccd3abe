"""The Kubernetes manifests in deploy/kubernetes/, checked offline.

Every resource is validated in strict mode (an unknown field is an error) against the Kubernetes
JSON schemas that the kubernetes-validate package ships; then the facts that make the deployment
work are asserted one by one: GPUs, the node's identity from the downward API, secrets, probes,
Services that select their pods, the database's address. docs/operations/kubernetes.md says why.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from sqlalchemy.engine import make_url

from app.orchestrator.manifests import load_config
from tests.unit.modelstore_factory import ModelStoreFactory

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
# The newest release whose schemas kubernetes-validate 1.37 bundles, and the oldest release the
# manifests support (the StatefulSet's persistentVolumeClaimRetentionPolicy is on by default from
# 1.27): a field added after it would fail there. validate() answers with the schema version it
# used, so a package without these schemas fails instead of falling back to older ones.
KUBERNETES_VERSION = "1.37"
MINIMUM_KUBERNETES_VERSION = "1.27"
NAMESPACE = "gpu-orchestrator"
STOP_MARGIN_S = 30  # vLLM's own shutdown and the orchestrator's last writes, after STOP_GRACE_S

Resource = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(path for path in K8S_DIR.glob("*.yaml") if path != KUSTOMIZATION)


def load_resources(path: Path) -> list[Resource]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    assert documents, f"{path.name} holds no resource"
    return documents


def all_resources() -> list[Resource]:
    return [resource for path in manifest_files() for resource in load_resources(path)]


def find(kind: str, name: str) -> Resource:
    (match,) = [r for r in all_resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return match


def kustomization() -> dict[str, Any]:
    document = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def pod_spec(workload: Resource) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container(workload: Resource, name: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [
        c for c in pod_spec(workload)["containers"] if c["name"] == name
    ]
    (match,) = matches
    return match


def orchestrator() -> dict[str, Any]:
    return container(find("DaemonSet", "gpu-orchestrator"), "orchestrator")


def env_of(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in spec["env"]}


def secret_example() -> dict[str, str]:
    data = find("Secret", "gpu-orchestrator")["stringData"]
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, MINIMUM_KUBERNETES_VERSION])
@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_manifest_validates_strictly_against_the_kubernetes_schema(
    path: Path, version: str
) -> None:
    for resource in load_resources(path):
        assert kubernetes_validate.validate(resource, version, strict=True) == version


def test_strict_validation_rejects_a_misspelt_field() -> None:
    daemonset = copy.deepcopy(find("DaemonSet", "gpu-orchestrator"))
    pod_spec(daemonset)["containers"][0]["livenesProbe"] = {"httpGet": {"port": 8000}}

    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_only_those() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed)), listed
    assert sorted(listed) == [path.name for path in manifest_files()]


def test_kustomization_namespace_is_every_resources_namespace() -> None:
    assert kustomization()["namespace"] == NAMESPACE
    for resource in all_resources():
        if resource["kind"] == "Namespace":
            assert resource["metadata"]["name"] == NAMESPACE
        else:
            assert resource["metadata"]["namespace"] == NAMESPACE, resource["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_kustomize_renders_the_listed_resources_valid() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    names = sorted((r["kind"], r["metadata"]["name"]) for r in rendered)
    assert names == sorted((r["kind"], r["metadata"]["name"]) for r in all_resources())
    for resource in rendered:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def overlay_example() -> str:
    """The overlay that kustomization.yaml's opening comment shows, uncommented."""
    lines = KUSTOMIZATION.read_text(encoding="utf-8").splitlines()
    start = lines.index("#   # my-cluster/kustomization.yaml") + 1
    example = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        example.append(line.removeprefix("#   "))
    return "\n".join(example) + "\n"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_kustomize_renders_the_documented_overlay(tmp_path: Path) -> None:
    shutil.copytree(K8S_DIR, tmp_path / "gpu-orchestrator" / "deploy" / "kubernetes")
    overlay = tmp_path / "my-cluster"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(overlay_example(), encoding="utf-8")
    (overlay / "secrets.env").write_text(
        "api-token=t0ken\npostgres-password=pw\ndatabase-url=postgresql+psycopg://u:pw@db:5432/g\n",
        encoding="utf-8",
    )

    result = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    rendered = {
        (doc["kind"], doc["metadata"]["name"]): doc
        for doc in yaml.safe_load_all(result.stdout)
        if doc
    }
    assert ("StatefulSet", "postgres") not in rendered
    secret = rendered[("Secret", "gpu-orchestrator")]
    # Replaced whole: a stringData left from the placeholder would win over data on apply.
    assert "stringData" not in secret and set(secret["data"]) >= {"api-token", "database-url"}
    daemonset = rendered[("DaemonSet", "gpu-orchestrator")]
    (orchestrator_container,) = pod_spec(daemonset)["containers"]
    assert orchestrator_container["resources"]["limits"]["nvidia.com/gpu"] == 8
    images = [c["image"] for c in pod_spec(daemonset)["initContainers"] + [orchestrator_container]]
    assert all(image.startswith("registry.example.com/") for image in images), images
    for resource in rendered.values():
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_daemonset_takes_gpus_on_gpu_nodes_without_cpu_or_memory_limits() -> None:
    daemonset = find("DaemonSet", "gpu-orchestrator")
    resources = orchestrator()["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    # Engines are subprocesses in this container's cgroup: a limit would throttle or OOM-kill them.
    assert set(resources["limits"]) == {"nvidia.com/gpu"}
    assert pod_spec(daemonset)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # A surge pod could never get the GPUs its predecessor holds on the same node.
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0


def test_daemonset_names_the_node_and_its_url_from_the_downward_api() -> None:
    env_list = [entry["name"] for entry in orchestrator()["env"]]
    env = env_of(orchestrator())
    node_name = env["GPU_ORCH_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert node_name == "spec.nodeName"
    url = env["GPU_ORCH_NODE_URL"]["value"]
    (ip_variable,) = re.findall(r"\$\((\w+)\)", url)
    assert env[ip_variable]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert env_list.index(ip_variable) < env_list.index("GPU_ORCH_NODE_URL")
    (port,) = orchestrator()["ports"]
    assert url == f"http://$({ip_variable}):{port['containerPort']}"


@pytest.mark.parametrize(
    ("variable", "key"),
    [("GPU_ORCH_DATABASE_URL", "database-url"), ("GPU_ORCH_API_TOKEN", "api-token")],
)
def test_daemonset_reads_credentials_from_the_secret(variable: str, key: str) -> None:
    reference = env_of(orchestrator())[variable]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "gpu-orchestrator", "key": key}
    assert key in secret_example()


def test_daemonset_probes_healthz_and_readyz_on_the_container_port() -> None:
    spec = orchestrator()
    (port,) = spec["ports"]
    assert port["containerPort"] == 8000
    assert spec["args"] == ["serve", "--host", "0.0.0.0", "--port", str(port["containerPort"])]
    expected = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        http_get = spec[probe]["httpGet"]
        assert http_get["path"] == path, probe
        assert http_get["port"] in {port["name"], port["containerPort"]}, probe


def test_daemonset_runs_engines_in_the_pod_and_gives_them_time_to_stop() -> None:
    env = env_of(orchestrator())
    assert env["GPU_ORCH_LAUNCHER"]["value"] == "subprocess"
    assert env["GPU_ORCH_GPU_BACKEND"]["value"] == "nvml"
    assert env["GPU_ORCH_STOP_ENGINES_ON_SHUTDOWN"]["value"] == "true"
    grace_s = pod_spec(find("DaemonSet", "gpu-orchestrator"))["terminationGracePeriodSeconds"]
    assert grace_s >= float(env["GPU_ORCH_STOP_GRACE_S"]["value"]) + STOP_MARGIN_S


def test_daemonset_runs_as_the_images_user_with_a_read_only_root() -> None:
    daemonset = find("DaemonSet", "gpu-orchestrator")
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    (image_uid,) = re.findall(r"^ARG APP_UID=(\d+)$", dockerfile, flags=re.MULTILINE)
    security = {**pod_spec(daemonset)["securityContext"], **orchestrator()["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == int(image_uid)
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_daemonset_mounts_every_directory_the_settings_name() -> None:
    daemonset = find("DaemonSet", "gpu-orchestrator")
    env = env_of(orchestrator())
    mounts = {mount["mountPath"]: mount for mount in orchestrator()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec(daemonset)["volumes"]}

    def volume_at(variable: str) -> dict[str, Any]:
        volume: dict[str, Any] = volumes[mounts[env[variable]["value"]]["name"]]
        return volume

    assert "hostPath" in volume_at("GPU_ORCH_STATE_DIR")
    assert "hostPath" in volume_at("GPU_ORCH_LOG_DIR")
    assert volume_at("GPU_ORCH_CONFIG_DIR")["configMap"]["name"] == "gpu-orchestrator-manifests"
    store = volume_at("MODEL_STORE_ROOT")
    assert store["hostPath"]["type"] == "Directory"  # a missing store fails, never an empty one
    assert mounts[env["MODEL_STORE_ROOT"]["value"]]["readOnly"] is True
    assert env["GPU_ORCH_MODEL_STORE_ROOT"]["value"] == env["MODEL_STORE_ROOT"]["value"]
    # The root filesystem is read-only: HOME, /tmp and /dev/shm must be volumes.
    for path in (env["HOME"]["value"], "/tmp", "/dev/shm"):
        assert path in mounts, path
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize(
    ("service", "workload_kind", "workload"),
    [
        ("gpu-orchestrator", "DaemonSet", "gpu-orchestrator"),
        ("gpu-orchestrator-nodes", "DaemonSet", "gpu-orchestrator"),
        ("postgres", "StatefulSet", "postgres"),
    ],
)
def test_service_selects_its_workloads_pods(
    service: str, workload_kind: str, workload: str
) -> None:
    spec = find("Service", service)["spec"]
    owner = find(workload_kind, workload)
    pod_labels = owner["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= pod_labels.items()
    assert owner["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container_ports = [port for c in pod_spec(owner)["containers"] for port in c["ports"]]
    for port in spec["ports"]:
        assert any(port["targetPort"] in {p["name"], p["containerPort"]} for p in container_ports)


def test_services_split_clients_from_node_to_node_traffic() -> None:
    clients = find("Service", "gpu-orchestrator")["spec"]
    nodes = find("Service", "gpu-orchestrator-nodes")["spec"]
    assert clients["type"] == "ClusterIP" and "clusterIP" not in clients
    assert nodes["clusterIP"] == "None"
    assert nodes["publishNotReadyAddresses"] is True


def test_postgres_keeps_its_data_on_a_claim_and_answers_at_the_database_urls_host() -> None:
    statefulset = find("StatefulSet", "postgres")
    url = make_url(secret_example()["database-url"])
    service = find("Service", url.host or "")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert url.drivername == "postgresql+psycopg"
    assert url.port in {port["port"] for port in service["spec"]["ports"]}
    env = env_of(container(statefulset, "postgres"))
    assert url.username == env["POSTGRES_USER"]["value"]
    assert url.database == env["POSTGRES_DB"]["value"]
    password = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": "gpu-orchestrator", "key": "postgres-password"}
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    data_mount = next(
        mount
        for mount in container(statefulset, "postgres")["volumeMounts"]
        if mount["name"] == claim["metadata"]["name"]
    )
    assert env["PGDATA"]["value"].startswith(data_mount["mountPath"] + "/")


def test_secret_example_fails_closed_until_replaced() -> None:
    secret = secret_example()
    # An example token copied unchanged to every cluster would be a shared secret; empty, the
    # orchestrator refuses to listen on the pod IP, and postgres refuses to initialise.
    assert secret["api-token"] == ""
    assert secret["postgres-password"] == ""
    assert make_url(secret["database-url"]).password == "REPLACE-WITH-POSTGRES-PASSWORD"


def test_configmap_manifests_load_cleanly_with_a_model_store(tmp_path: Path) -> None:
    data = find("ConfigMap", "gpu-orchestrator-manifests")["data"]
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for name, text in data.items():
        (config_dir / name).write_text(text, encoding="utf-8")
    agent_map = json.loads(data["AGENT_MODEL_MAP.json"])
    store = ModelStoreFactory(tmp_path / "models")
    for base in agent_map["base_models"].values():
        version = base["model_store_version"]
        store.add_hf_snapshot(base["model_store_agent"], version, base["hf_id"], current=True)
    for adapters in agent_map["agents"].values():
        for adapter in adapters:
            store.add_adapter(adapter["adapter_model_store_path"])

    loaded = load_config(config_dir, store.root, strict_adapters=True)

    assert loaded.all_issues == ()
    manifests = sorted(name for name in data if name.endswith((".yaml", ".yml")))
    assert [Path(m.file).name for m in loaded.manifests] == manifests
    gpus_per_pod = int(orchestrator()["resources"]["limits"]["nvidia.com/gpu"])
    for spec in loaded.specs:
        assert spec.model.startswith(str(store.root)), spec.id
        # A model needing more GPUs than a pod is given could never start on any node.
        assert spec.tensor_parallel_size <= gpus_per_pod, spec.id
