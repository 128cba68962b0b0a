"""deploy/ checked without a cluster: every file parses, and image, compose and Kubernetes agree with each other and the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from brainhands.stack import BUILTIN_HANDS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DATASTORES = K8S / "components" / "datastores"

#: The CLI contract: what each service runs (after the image's ENTRYPOINT "brainhands") and its ports.
COMMANDS = {
    "gateway": ["serve", "gateway", "--config", "/etc/brainhands/gateway.yaml"],
    "hands-fs": ["serve", "hand", "hands.builtin.fs", "--host", "0.0.0.0", "--port", "50071"],
    "hands-sandbox": ["serve", "hand", "hands.builtin.sandbox", "--host", "0.0.0.0", "--port", "50072"],
    "hands-llm": ["serve", "hand", "hands.builtin.llm", "--host", "0.0.0.0", "--port", "50073"],
    "brain": ["serve", "brain", "--host", "0.0.0.0", "--port", "50061", "--config", "/etc/brainhands/brain.yaml", "--adopt"],
}
GRPC_PORTS = {"gateway": 50051, "hands-fs": 50071, "hands-sandbox": 50072, "hands-llm": 50073, "brain": 50061}
METRICS_PORT = 9464
HANDS = ("hands-fs", "hands-sandbox", "hands-llm")

WORKLOAD_KINDS = ("Deployment", "StatefulSet")


# --- loading ---------------------------------------------------------------------------------------


def _docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _kustomize_docs(directory: Path) -> list[dict]:
    """The objects a kustomization lists (resources plus generated ConfigMaps), as written."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = [doc for resource in kustomization.get("resources", []) for doc in _docs(directory / resource)]
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for entry in generator.get("files", []):
            key, _, source = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
            data[key] = (directory / source).read_text()
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return docs


BASE = _kustomize_docs(K8S)
DATASTORE_DOCS = _kustomize_docs(DATASTORES)
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


DEPLOYMENTS = _of_kind(BASE, "Deployment")
SERVICES = _of_kind(BASE, "Service")
SECRET = _of_kind(BASE, "Secret")["brainhands-keys"]
GATEWAY_CONFIG_TEXT = _of_kind(BASE, "ConfigMap")["gateway-config"]["data"]["gateway.yaml"]
GATEWAY_CONFIG = yaml.safe_load(GATEWAY_CONFIG_TEXT)


def _workloads(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in WORKLOAD_KINDS}


def _containers(workload: dict) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def _container(name: str) -> dict:
    (container,) = DEPLOYMENTS[name]["spec"]["template"]["spec"]["containers"]
    return container


def _pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def _env_names(container: dict) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def _selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions In/NotIn/Exists) applied to labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _brainhands_compose_services() -> dict[str, dict]:
    return {name: s for name, s in COMPOSE["services"].items() if s.get("image", "").startswith("brainhands:")}


# --- every file parses -----------------------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses_into_named_objects():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 10, files
    for path in files:
        docs = _docs(path)
        assert docs, f"{path} is empty"
        if K8S in path.parents and path.parent.name != "config" and path.name != "kustomization.yaml":
            for doc in docs:
                assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: {doc}"
                assert doc["metadata"].get("name"), f"{path}: an object without a name"
                # The base is namespace-agnostic: the namespace comes from an overlay or -n.
                assert "namespace" not in doc["metadata"], f"{path}: {doc['metadata']['name']} pins a namespace"


def test_the_base_has_every_service_of_the_stack():
    assert set(DEPLOYMENTS) == set(COMMANDS)
    assert set(SERVICES) == set(COMMANDS)
    assert set(_of_kind(BASE, "HorizontalPodAutoscaler")) == set(HANDS)
    assert set(_of_kind(BASE, "PodDisruptionBudget")) == {"gateway"}


# --- kubectl kustomize -----------------------------------------------------------------------------


def _kustomize(directory: Path) -> list[dict]:
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


needs_kubectl = pytest.mark.skipif(
    not shutil.which("kubectl"), reason="kubectl is not installed; the manifests are still checked as parsed YAML"
)


@needs_kubectl
def test_kubectl_kustomize_renders_the_whole_base():
    rendered = _kustomize(K8S)
    # Generated ConfigMaps get a content hash suffix; everything else keeps its name.
    names = {(d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"]) if d["kind"] == "ConfigMap" else d["metadata"]["name"]) for d in rendered}
    assert names == {(d["kind"], d["metadata"]["name"]) for d in BASE}
    (config_map,) = [d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("gateway-config")]
    assert config_map["metadata"]["name"] != "gateway-config", "the config map name should carry a content hash"
    (brain_map,) = [d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("brain-config")]
    (brain,) = [d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "brain"]
    brain_volumes = {v["name"]: v for v in brain["spec"]["template"]["spec"]["volumes"]}
    assert brain_volumes["config"]["configMap"]["name"] == brain_map["metadata"]["name"] != "brain-config"
    assert config_map["data"]["gateway.yaml"] == GATEWAY_CONFIG_TEXT
    # kustomize rewrote the gateway's volume to the hashed name, so a config change rolls the pods.
    (gateway,) = [d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway"]
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    for doc in rendered:
        for container in _containers(doc) if doc["kind"] in WORKLOAD_KINDS else []:
            assert container["image"] == f"brainhands:{VERSION}"


@needs_kubectl
def test_kubectl_kustomize_renders_the_base_with_the_datastores_component(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({
            "resources": [os.path.relpath(K8S, tmp_path)],
            "components": [os.path.relpath(DATASTORES, tmp_path)],
        })
    )
    rendered = _kustomize(tmp_path)
    services = _of_kind(rendered, "Service")
    # The gateway's quota store and the brain's sessions URL name these Services and ports.
    assert GATEWAY_CONFIG["quota_store"] == "redis://redis:6379/0"
    assert [p["port"] for p in services["redis"]["spec"]["ports"]] == [6379]
    assert re.match(r"postgresql://[^@]+@postgres:5432/", SECRET["stringData"]["sessions-url"])
    assert [p["port"] for p in services["postgres"]["spec"]["ports"]] == [5432]
    # The component adds PostgreSQL's password next to the sessions URL that must carry it.
    (secret,) = _of_kind(rendered, "Secret").values()
    password = secret["stringData"]["postgres-password"]
    assert f":{password}@postgres:" in secret["stringData"]["sessions-url"]


# --- one image -------------------------------------------------------------------------------------


def test_k8s_and_compose_run_the_same_image_tagged_with_the_package_version():
    image = f"brainhands:{VERSION}"
    for name, deployment in DEPLOYMENTS.items():
        for container in _containers(deployment):
            assert container["image"] == image, name
    compose_services = _brainhands_compose_services()
    assert set(COMMANDS) <= set(compose_services)
    for name, service in compose_services.items():
        assert service["image"] == image, name
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "brainhands", "newTag": VERSION}]


def test_dockerfile_is_multi_stage_non_root_with_the_brainhands_entrypoint_and_every_port_exposed():
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE, re.MULTILINE | re.IGNORECASE)
    assert stages == ["builder", "runtime"]
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert "bubblewrap" in runtime, "the sandbox hand needs bwrap in the runtime image"
    assert "COPY --from=builder /opt/brainhands /opt/brainhands" in runtime
    (user,) = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and gid.isdigit(), "a numeric non-root UID lets Kubernetes verify runAsNonRoot"
    assert re.search(r'^ENTRYPOINT \["brainhands"\]$', DOCKERFILE, re.MULTILINE)
    assert re.search(r'^CMD \["--help"\]$', DOCKERFILE, re.MULTILINE)
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", DOCKERFILE, re.MULTILINE) for p in line.split()}
    assert exposed == {*GRPC_PORTS.values(), METRICS_PORT}
    # The Kubernetes pods run as the image's user (the sandbox alone has its own UID, see hands-sandbox.yaml).
    for name, deployment in DEPLOYMENTS.items():
        pod_uid = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
        assert pod_uid == (10002 if name == "hands-sandbox" else int(uid)), name


def test_dockerignore_keeps_the_build_context_to_the_package():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "an allow-list: nothing enters the image unless named"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= allowed
    assert "pyproject.toml" in allowed
    assert not allowed & {"tests", ".git", ".env", "deploy"}


# --- commands, ports, probes, selectors ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_k8s_and_compose_run_the_cli_contract_command(name):
    assert _container(name)["args"] == COMMANDS[name]
    assert "command" not in _container(name), "the image's ENTRYPOINT must stay brainhands"
    assert COMPOSE["services"][name]["command"] == COMMANDS[name]


def _serve_choices(parser) -> set[str]:
    """The services `brainhands serve` knows (argparse keeps subcommands as choices of a subparsers action)."""
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    (services,) = [a for a in commands.choices["serve"]._actions if a.dest == "service"]
    return set(services.choices)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_brainhands_cli_accepts_the_deployed_command(name):
    """The argv in the manifests parses with the real CLI, so a renamed flag breaks this test, not a rollout."""
    from brainhands.cli import build_parser

    parser = build_parser()
    assert COMMANDS[name][1] in _serve_choices(parser)
    args = parser.parse_args(COMMANDS[name])
    assert args.func is not None
    if "--port" in COMMANDS[name]:
        assert args.port == GRPC_PORTS[name] and args.host == "0.0.0.0"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_container_ports_probes_and_service_agree(name):
    container = _container(name)
    grpc_port = GRPC_PORTS[name]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == ({"grpc": grpc_port, "metrics": METRICS_PORT} if name == "gateway" else {"grpc": grpc_port})
    # Native gRPC probes against grpc.health.v1 on the serving port.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port}, f"{name} {probe}"
    service = SERVICES[name]
    selector = service["spec"]["selector"]
    assert _selects({"matchLabels": selector}, _pod_labels(DEPLOYMENTS[name]))
    assert _selects({"matchLabels": DEPLOYMENTS[name]["spec"]["selector"]["matchLabels"]}, _pod_labels(DEPLOYMENTS[name]))
    others = [other for other, d in DEPLOYMENTS.items() if other != name and _selects({"matchLabels": selector}, _pod_labels(d))]
    assert not others, f"Service {name} also selects {others}"
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports.values(), f"Service {name} targets {port['targetPort']}, not a container port"
        # Headless Services hand out pod IPs, so the port clients dial is the container port.
        assert port["port"] == port["targetPort"]
    assert {p["name"] for p in service["spec"]["ports"]} == set(ports)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_compose_serves_the_same_ports_and_checks_health_on_them(name):
    service = COMPOSE["services"][name]
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "grpc_health" in test[3] and test[4] == f"127.0.0.1:{GRPC_PORTS[name]}"
    for mapping in service.get("ports", []):
        container_port = int(mapping.rsplit(":", 1)[1])
        assert container_port in (GRPC_PORTS[name], METRICS_PORT), mapping


def test_compose_health_check_really_probes_grpc_health():
    """The inline check is real Python: it fails against a port where nothing listens."""
    import sys

    code = COMPOSE["services"]["gateway"]["healthcheck"]["test"][3]
    compile(code, "<healthcheck>", "exec")
    result = subprocess.run([sys.executable, "-c", code, "127.0.0.1:9"], capture_output=True, timeout=30)
    assert result.returncode != 0


def test_the_fs_workspace_is_a_shared_claim_mounted_where_the_hand_looks():
    container = _container("hands-fs")
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["workspace"] == env["BRAINHANDS_WORKSPACE"] == "/workspace"
    volumes = {v["name"]: v for v in DEPLOYMENTS["hands-fs"]["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["workspace"]["persistentVolumeClaim"]["claimName"]
    pvc = _of_kind(BASE, "PersistentVolumeClaim")[claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every fs replica must see the same files"
    compose_fs = COMPOSE["services"]["hands-fs"]
    assert compose_fs["environment"]["BRAINHANDS_WORKSPACE"] == "/workspace"
    assert "workspace:/workspace" in compose_fs["volumes"]


# --- hardening and limits --------------------------------------------------------------------------


def _quantity(value) -> float:
    """CPU or memory quantity as a number (enough for comparing a request with its limit)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("name", sorted(_workloads(BASE)) + sorted(_workloads(DATASTORE_DOCS)))
def test_every_pod_is_non_root_hardened_and_limited(name):
    workload = {**_workloads(BASE), **_workloads(DATASTORE_DOCS)}[name]
    pod = workload["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in _containers(workload):
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) > 0, container["name"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            assert _quantity(resources["requests"][kind]) <= _quantity(resources["limits"][kind]), f"{name} {kind}"
        # A read-only root needs somewhere writable for temporary files.
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if container["image"].startswith("brainhands:"):
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp must be an emptyDir"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_compose_services_are_non_root_read_only_and_limited(name):
    service = COMPOSE["services"][name]
    uid = int(service["user"].split(":")[0])
    assert uid >= 10000
    assert service["read_only"] is True
    assert any(t.startswith("/tmp") for t in service["tmpfs"])
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    limits = service["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and limits["memory"]


def test_compose_runs_two_gateway_replicas_sharing_redis():
    gateway = COMPOSE["services"]["gateway"]
    assert gateway["deploy"]["replicas"] == 2
    assert gateway["depends_on"]["redis"] == {"condition": "service_healthy"}
    compose_config = yaml.safe_load((DEPLOY / "gateway.yaml").read_text())
    assert compose_config["quota_store"] == "redis://redis:6379/0"
    assert "./gateway.yaml:/etc/brainhands/gateway.yaml:ro" in gateway["volumes"]
    assert DEPLOYMENTS["gateway"]["spec"]["replicas"] == 2


# --- gateway config --------------------------------------------------------------------------------


def test_compose_and_k8s_gateway_configs_agree():
    assert yaml.safe_load((DEPLOY / "gateway.yaml").read_text()) == GATEWAY_CONFIG


def test_gateway_config_listens_where_the_pod_and_service_expect():
    assert set(GATEWAY_CONFIG) <= {"listen", "metrics", "quota_store", "fail_open", "tenants", "routes",
                                   "registrants", "operators", "delegation_key"}
    assert GATEWAY_CONFIG["listen"] == f"0.0.0.0:{GRPC_PORTS['gateway']}"
    assert GATEWAY_CONFIG["metrics"] == f"0.0.0.0:{METRICS_PORT}"
    assert GATEWAY_CONFIG["fail_open"] is False
    volumes = {v["name"]: v for v in DEPLOYMENTS["gateway"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "gateway-config"
    mounts = {m["name"]: m["mountPath"] for m in _container("gateway")["volumeMounts"]}
    assert f"{mounts['config']}/gateway.yaml" == COMMANDS["gateway"][-1]


def test_gateway_routes_reach_the_hand_services_that_serve_those_hands():
    routed = set()
    for route in GATEWAY_CONFIG["routes"]:
        for backend in route["backends"]:
            host, _, port = backend.rpartition(":")
            service = SERVICES[host]
            assert int(port) in [p["port"] for p in service["spec"]["ports"]], backend
            # Headless, so the name resolves to each ready pod rather than one virtual IP.
            assert service["spec"]["clusterIP"] == "None", backend
            module = _container(host)["args"][2]  # serve hand MODULE
            family = module.rsplit(".", 1)[1]
            # The globs the module's hands answer to (the fs service's include workspace_*), as the local stack routes.
            assert set(route["hands"]) <= set(BUILTIN_HANDS[family][1]), (route, module)
            routed.add(host)
    assert routed == set(HANDS)


def _config_keys(config: dict) -> list[str]:
    """Every key the gateway config reads: tenants', registrants', operators' and the delegation key."""
    entries = [*config["tenants"], *config.get("registrants", []), *config.get("operators", [])]
    return [key for entry in entries for key in entry["api_keys"]] + [config["delegation_key"]]


def test_every_key_the_gateway_reads_is_set_from_the_secret_and_in_compose():
    env = {e["name"]: e for e in _container("gateway")["env"]}
    compose_env = COMPOSE["services"]["gateway"]["environment"]
    for key in _config_keys(GATEWAY_CONFIG):
        assert key.startswith("env:"), f"{key}: keys come from the environment, never the file"
        var = key.removeprefix("env:")
        assert "secretKeyRef" in env[var]["valueFrom"], var
        assert var in compose_env, var


def test_the_brain_presents_the_default_key_and_the_llm_hand_none_it_calls_as_its_caller():
    tenants = {t["name"]: t for t in GATEWAY_CONFIG["tenants"]}

    def ref(deployment, var):
        (entry,) = [e for e in _container(deployment)["env"] if e["name"] == var]
        return entry["valueFrom"]["secretKeyRef"]["key"]

    (key,) = tenants["default"]["api_keys"]
    assert ref("brain", "BRAINHANDS_API_KEY") == ref("gateway", key.removeprefix("env:"))
    # Workers present the delegation of the call they serve; a key of their own would widen what a caller may do.
    assert "BRAINHANDS_API_KEY" not in _env_names(_container("hands-llm"))
    assert list(tenants) == ["default"]
    compose = COMPOSE["services"]
    assert "BRAINHANDS_API_KEY" not in compose["hands-llm"]["environment"]
    assert compose["brain"]["environment"]["BRAINHANDS_API_KEY"] == compose["gateway"]["environment"]["BRAINHANDS_API_KEY"]


def test_the_brain_is_bound_behind_a_key_from_the_secret():
    from brain.auth import load_access

    for command in (_container("brain")["args"], COMPOSE["services"]["brain"]["command"]):
        assert command[command.index("--config") + 1] == "/etc/brainhands/brain.yaml"
    mounts = {m["name"]: m["mountPath"] for m in _container("brain")["volumeMounts"]}
    volumes = {v["name"]: v for v in DEPLOYMENTS["brain"]["spec"]["template"]["spec"]["volumes"]}
    assert mounts["config"] == "/etc/brainhands" and volumes["config"]["configMap"]["name"] == "brain-config"
    assert "./brain.yaml:/etc/brainhands/brain.yaml:ro" in COMPOSE["services"]["brain"]["volumes"]
    assert (K8S / "config" / "brain.yaml").read_text().split("\n", 1)[1] == (DEPLOY / "brain.yaml").read_text().split("\n", 1)[1]
    key = SECRET["stringData"][[e for e in _container("brain")["env"] if e["name"] == "BRAINHANDS_BRAIN_KEY"][0]
                                ["valueFrom"]["secretKeyRef"]["key"]]
    access = load_access(K8S / "config" / "brain.yaml", environ={"BRAINHANDS_BRAIN_KEY": key})
    assert access.authenticate(key).name == "default" and access.authenticate("another key") is None


def _secret_env(deployment: str) -> dict[str, str]:
    """The environment the pod would get from the Secret (the placeholders)."""
    values = {}
    for entry in _container(deployment)["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            values[entry["name"]] = SECRET["stringData"][ref["key"]]
    return values


@pytest.mark.parametrize("path", [K8S / "config" / "gateway.yaml", DEPLOY / "gateway.yaml"], ids=["k8s", "compose"])
def test_the_gateway_accepts_the_deployed_config(path, monkeypatch):
    from gateway.config import load_config

    for var, value in _secret_env("gateway").items():
        monkeypatch.setenv(var, value)
    config = load_config(path)
    assert config.listen_port == GRPC_PORTS["gateway"]
    assert config.quota_store == "redis://redis:6379/0"
    assert [r.backends for r in config.routes] == [("hands-fs:50071",), ("hands-sandbox:50072",), ("hands-llm:50073",)]
    assert config.tenants.authenticate(SECRET["stringData"]["brainhands-api-key"]).name == "default"
    assert [r.name for r in config.registrants] == ["hands"] and [o.name for o in config.operators] == ["ops"]
    assert config.delegation_key == SECRET["stringData"]["delegation-key"].encode()


# --- secrets ---------------------------------------------------------------------------------------


def test_every_secret_reference_names_a_key_of_the_secret():
    secrets = _of_kind(BASE + DATASTORE_DOCS, "Secret")
    keys = set(SECRET["stringData"]) | {"postgres-password"}  # the datastores component patches that one in
    used = set()
    for name, workload in {**_workloads(BASE), **_workloads(DATASTORE_DOCS)}.items():
        for container in _containers(workload):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, f"{name}: {entry['name']} reads a missing Secret {ref['name']}"
                    assert ref["key"] in keys, f"{name}: {entry['name']} reads a missing key {ref['key']}"
                    used.add(ref["key"])
    assert set(SECRET["stringData"]) <= used, "a key nobody reads"


def test_the_secret_holds_only_clearly_marked_placeholders():
    assert "data" not in SECRET, "stringData keeps the placeholders readable"
    for key, value in SECRET["stringData"].items():
        assert "REPLACE-ME" in value, key
    assert "REPLACE" in (K8S / "secret.yaml").read_text().split("apiVersion")[0]


def test_secret_backed_settings_are_the_same_variables_in_compose_and_k8s():
    """Each service gets the same environment variable names in both, so its config is read the same way."""
    for name in COMMANDS:
        k8s = _env_names(_container(name))
        compose = set(COMPOSE["services"][name]["environment"])
        assert k8s == compose, f"{name}: only k8s {k8s - compose}, only compose {compose - k8s}"


def test_the_sandbox_and_fs_hands_get_no_secret_at_all():
    for name in ("hands-fs", "hands-sandbox"):
        assert not _secret_env(name), name
        assert not any(v.startswith("${") and "KEY" in v for v in COMPOSE["services"][name]["environment"].values())


# --- autoscaling and disruption --------------------------------------------------------------------


@pytest.mark.parametrize("name", HANDS)
def test_each_hand_scales_with_its_own_autoscaler(name):
    hpa = _of_kind(BASE, "HorizontalPodAutoscaler")[name]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in DEPLOYMENTS[name]["spec"], "the autoscaler owns the count; apply must not reset it"
    (resource,) = hpa["spec"]["metrics"]
    assert resource["resource"]["name"] == "cpu"
    assert "cpu" in _container(name)["resources"]["requests"], "CPU utilisation needs a CPU request"


def test_the_gateway_disruption_budget_keeps_one_replica_of_two():
    pdb = _of_kind(BASE, "PodDisruptionBudget")["gateway"]
    assert _selects(pdb["spec"]["selector"], _pod_labels(DEPLOYMENTS["gateway"]))
    assert 1 <= pdb["spec"]["minAvailable"] < DEPLOYMENTS["gateway"]["spec"]["replicas"]
    strategy = DEPLOYMENTS["gateway"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


# --- network policies ------------------------------------------------------------------------------

POLICIES = list(_of_kind(BASE, "NetworkPolicy").values())


def _ingress_policies(labels: dict) -> list[dict]:
    return [p for p in POLICIES if "Ingress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], labels)]


def _allowed_sources(port: int, labels: dict) -> list[dict]:
    """The `from` peers of every ingress rule that lets traffic reach this pod on this port."""
    peers = []
    for policy in _ingress_policies(labels):
        for rule in policy["spec"].get("ingress", []):
            rule_ports = [p["port"] for p in rule.get("ports", [])]
            if not rule_ports or port in rule_ports:
                peers.extend(rule.get("from", [{}]))
    return peers


@pytest.mark.parametrize("name", HANDS)
def test_hands_accept_calls_only_from_gateway_pods(name):
    labels = _pod_labels(DEPLOYMENTS[name])
    assert _ingress_policies(labels), f"no ingress policy selects {name}: it accepts anyone"
    peers = _allowed_sources(GRPC_PORTS[name], labels)
    assert peers, f"nothing may reach {name} on its port, not even the gateway"
    for peer in peers:
        assert set(peer) == {"podSelector"}, f"{name} admits {peer}"
        admitted = [d for d, dep in DEPLOYMENTS.items() if _selects(peer["podSelector"], _pod_labels(dep))]
        assert admitted == ["gateway"], f"{name} admits {admitted}"


def test_gateway_accepts_grpc_only_from_pods_that_dial_it():
    labels = _pod_labels(DEPLOYMENTS["gateway"])
    peers = _allowed_sources(GRPC_PORTS["gateway"], labels)
    assert peers and all(set(p) == {"podSelector"} for p in peers)
    admitted = {d for p in peers for d, dep in DEPLOYMENTS.items() if _selects(p["podSelector"], _pod_labels(dep))}
    dialers = {d for d in DEPLOYMENTS if "BRAINHANDS_GATEWAY" in _env_names(_container(d))}
    assert admitted == dialers == {"brain", "hands-llm"}


def test_brain_accepts_only_labelled_clients():
    labels = _pod_labels(DEPLOYMENTS["brain"])
    peers = _allowed_sources(GRPC_PORTS["brain"], labels)
    assert peers == [{"podSelector": {"matchLabels": {"brainhands.dev/brain-client": "true"}}}]
    assert not any(_selects(peers[0]["podSelector"], _pod_labels(d)) for d in DEPLOYMENTS.values())


def test_fs_and_sandbox_hands_have_no_egress():
    for name in ("hands-fs", "hands-sandbox"):
        labels = _pod_labels(DEPLOYMENTS[name])
        egress = [p for p in POLICIES if "Egress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], labels)]
        assert egress and all(p["spec"].get("egress", []) == [] for p in egress), name
    # compose: the same, by networks: the hands network has no route out.
    assert COMPOSE["networks"]["hands"]["internal"] is True
    assert COMPOSE["services"]["hands-sandbox"]["networks"] == ["hands"]
    assert COMPOSE["services"]["hands-fs"]["networks"] == ["hands"]
