"""Build deploy/Dockerfile and run deploy/compose.yaml with podman, on machines with no Docker engine and no registry.

What this kind of machine needs, kept here and in .ci/run rather than in the image or the compose file:
containers run under runc with explicit ulimits (the default limits are refused); builds reach the
package registry only over the host's network with the host's CA bundle; no image can be pulled, so
the Dockerfile's base (ARG PYTHON_IMAGE) is an image made from Debian packages with mmdebstrap, and
Redis and PostgreSQL are stand-ins built on it (tests/deploy/images/). The compose file is read, not
run by a compose tool: its services, replicas, commands, environment, users, hardening, volumes,
networks (with DNS aliases), ports, health checks and start order become podman commands.

Measured on a shared, loaded 2-core machine (podman 4.3.1, Debian bookworm), once per machine: the base
image 100-270 s (mmdebstrap + import), the image 210 s (pip from the registry), the Redis and PostgreSQL
stand-ins 30 s and 80-120 s. Every run: the image build 13-25 s from cache, 210-270 s after any change
to the packages (pip installs every dependency again), the stack up 75-115 s, the crash test itself
25 s, the stack down 7-13 s; all of tests/deploy 3-3.5 minutes with the image cached.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
IMAGES = Path(__file__).resolve().parent / "images"

BASE_IMAGE = "localhost/brainhands-base"
IMAGE = "localhost/brainhands:container-test"
#: The compose file's images that cannot be pulled here, and the local stand-in built for each.
STANDINS = {"redis:7-alpine": ("localhost/brainhands-redis-standin", "redis"),
            "postgres:16-alpine": ("localhost/brainhands-postgres-standin", "postgres")}
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BASE_PACKAGES = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"

#: Global flags for every podman command: crun's defaults are refused on these machines.
PODMAN_GLOBAL = ["--runtime", "runc"]
#: Limits every container gets explicitly (podman's defaults are refused too).
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]


def podman_missing() -> str | None:
    """Why the container tests cannot run here, or None when they can."""
    if shutil.which("podman") is None:
        return "podman is not installed (.ci/run installs it with apt)"
    if shutil.which("runc") is None:
        return "runc is not installed (.ci/run installs it with apt)"
    try:
        subprocess.run(["podman", *PODMAN_GLOBAL, "info"], capture_output=True, check=True, timeout=60)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"podman does not work here: {exc}"
    return None


def podman(*args: str, timeout: float = 120, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
    """One podman command; a failure raises with podman's own message."""
    done = subprocess.run(["podman", *PODMAN_GLOBAL, *args], capture_output=True, timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ... failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
    return done


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False, timeout=60).returncode == 0


@dataclass
class Timings:
    """How long each step of building and starting took, in seconds (printed by the tests with -s or on failure)."""

    steps: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - started, 1)
            print(f"[containers] {name}: {self.steps[name]} s", flush=True)


def ensure_base_image(timings: Timings) -> str:
    """localhost/brainhands-base: Debian bookworm's python3 (3.11) from Debian packages, made once and reused."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap is not installed (.ci/run installs it with apt)")
    with timings.step("base image (mmdebstrap + podman import)"):
        debootstrap = subprocess.Popen(
            ["mmdebstrap", "--quiet", "--variant=apt", f"--include={BASE_PACKAGES}", "bookworm", "-"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            imported = subprocess.run(
                ["podman", *PODMAN_GLOBAL, "import", "--change", 'CMD ["python3"]', "-", BASE_IMAGE],
                stdin=debootstrap.stdout, capture_output=True, timeout=1200,
            )
        finally:
            debootstrap.stdout.close()
            made = debootstrap.wait(timeout=1200)
        if made != 0 or imported.returncode != 0:
            raise RuntimeError(f"cannot make {BASE_IMAGE}: mmdebstrap exit {made}: {debootstrap.stderr.read().decode()[-2000:]}"
                               f" / podman import: {imported.stderr.decode()[-2000:]}")
    return BASE_IMAGE


def build(tag: str, containerfile: Path, context: Path, timings: Timings, step: str, *, build_args: dict[str, str],
          target: str | None = None) -> str:
    """podman build over the host's network with the host's CA bundle mounted, so pip and apt reach their registries."""
    args = ["build", "--network", "host", *ULIMITS, "--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
            "-f", str(containerfile), "-t", tag]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    if target:
        args += ["--target", target]
    with timings.step(step):
        podman(*args, str(context), timeout=1800)
    return tag


def build_image(timings: Timings) -> str:
    """deploy/Dockerfile, unchanged, on the Debian base."""
    base = ensure_base_image(timings)
    return build(IMAGE, ROOT / "deploy" / "Dockerfile", ROOT, timings, "image build (deploy/Dockerfile)",
                 build_args={"PYTHON_IMAGE": base})


def ensure_standins(timings: Timings) -> dict[str, str]:
    """The compose file's images, mapped to what runs them here: the image itself if present, else its stand-in."""
    mapping = {}
    for image, (standin, target) in STANDINS.items():
        if image_exists(image):
            mapping[image] = image
            continue
        if not image_exists(standin):
            build(standin, IMAGES / "services.Containerfile", IMAGES, timings, f"stand-in for {image}",
                  build_args={"BASE_IMAGE": ensure_base_image(timings)}, target=target)
        mapping[image] = standin
    return mapping


# -- the compose file --------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """${VAR} and ${VAR:-default} in every string, as compose does (a missing VAR without default is empty)."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load_compose(env: dict[str, str], path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file with anchors and merge keys resolved (YAML does both) and variables filled in."""
    return interpolate(yaml.safe_load(path.read_text()), env)


def start_order(services: dict[str, Any]) -> list[str]:
    """Services ordered so each comes after what it depends_on."""
    ordered: list[str] = []

    def visit(name: str, seen: tuple[str, ...] = ()) -> None:
        if name in ordered:
            return
        if name in seen:
            raise ValueError(f"compose: depends_on cycle through {name}")
        for dep in services[name].get("depends_on") or {}:
            visit(dep, (*seen, name))
        ordered.append(name)

    for name in services:
        visit(name)
    return ordered


@dataclass
class Container:
    """One running replica of a compose service."""

    stack: ComposeStack
    service: str
    name: str
    ports: dict[int, int] = field(default_factory=dict)  # container port -> host port on 127.0.0.1

    def address(self, port: int) -> str:
        return f"127.0.0.1:{self.ports[port]}"

    def inspect(self) -> dict[str, Any]:
        return json.loads(podman("inspect", self.name, timeout=60).stdout)[0]

    def pid(self) -> int:
        return int(self.inspect()["State"]["Pid"])

    def restarts(self) -> int:
        return int(self.inspect().get("RestartCount", 0))

    def crash(self) -> None:
        """SIGKILL the service's process from the host, as an OOM kill or a node fault would: the restart policy applies."""
        os.kill(self.pid(), 9)

    def healthy(self) -> bool:
        test = self.stack.services[self.service].get("healthcheck", {}).get("test")
        if not test:
            return podman("container", "exists", self.name, check=False).returncode == 0 and self.inspect()["State"]["Running"]
        argv = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
        return podman("exec", self.name, *argv, check=False, timeout=60).returncode == 0

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} is not healthy after {timeout:g} s; its log ends:\n{self.logs()[-3000:]}")
            time.sleep(0.5)

    def logs(self) -> str:
        done = podman("logs", self.name, check=False, timeout=60)
        return (done.stdout + done.stderr).decode(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The service's JSON log lines (BRAINHANDS_LOG_FORMAT=json), across restarts."""
        lines = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    lines.append(record)
        return lines


class ComposeStack:
    """deploy/compose.yaml run with podman under a project name of its own, so it collides with nothing.

    overrides: per service, keys merged over the file's, as a compose override file would
    (environment and volumes are added to; other keys replace). Host ports are ephemeral on
    127.0.0.1 rather than the file's fixed ones, so a stack can run beside anything else.
    """

    def __init__(self, images: dict[str, str], *, env: dict[str, str] | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None, path: Path = COMPOSE_FILE):
        self.path = path
        self.project = f"bhtest-{uuid.uuid4().hex[:8]}"
        compose = load_compose(env or {}, path)
        self.services: dict[str, dict[str, Any]] = compose["services"]
        for service, extra in (overrides or {}).items():
            spec = self.services[service]
            for key, value in extra.items():
                if key == "environment":
                    spec["environment"] = {**spec.get("environment", {}), **value}
                elif key == "volumes":
                    spec["volumes"] = [*spec.get("volumes", []), *value]
                else:
                    spec[key] = value
        self.networks: dict[str, dict[str, Any]] = compose.get("networks") or {}
        self.volumes: dict[str, Any] = compose.get("volumes") or {}
        self.images = images
        self.containers: dict[str, list[Container]] = {}

    def _name(self, kind: str) -> str:
        return f"{self.project}-{kind}"

    def up(self, timeout: float = 300) -> None:
        for network, spec in self.networks.items():
            podman("network", "create", *(["--internal"] if (spec or {}).get("internal") else []), self._name(network))
        for volume in self.volumes:
            podman("volume", "create", self._name(volume))
        for service in start_order(self.services):
            for dep, condition in (self.services[service].get("depends_on") or {}).items():
                if (condition or {}).get("condition") == "service_healthy":
                    for container in self.containers[dep]:
                        container.wait_healthy(timeout)
            replicas = int(((self.services[service].get("deploy") or {}).get("replicas")) or 1)
            self.containers[service] = [self._run(service, i + 1) for i in range(replicas)]
        for containers in self.containers.values():
            for container in containers:
                container.wait_healthy(timeout)

    def _run(self, service: str, index: int) -> Container:
        spec = self.services[service]
        name = f"{self.project}-{service}-{index}"
        args = ["run", "--detach", "--name", name, "--hostname", name, *ULIMITS]
        for network in spec.get("networks") or ["default"]:
            args += ["--network", f"{self._name(network)}:alias={service}"]
        for key, value in (spec.get("environment") or {}).items():
            args += ["--env", f"{key}={value}"]
        if spec.get("user"):
            args += ["--user", spec["user"]]
        if spec.get("read_only"):
            args.append("--read-only")
        tmpfs = spec.get("tmpfs") or []
        for mount in [tmpfs] if isinstance(tmpfs, str) else tmpfs:
            args += ["--tmpfs", mount]
        for cap in spec.get("cap_drop") or []:
            args += ["--cap-drop", cap]
        for opt in spec.get("security_opt") or []:
            args += ["--security-opt", opt]
        if spec.get("restart"):
            args += ["--restart", spec["restart"]]
        if spec.get("stop_grace_period"):
            args += ["--stop-timeout", str(int(str(spec["stop_grace_period"]).rstrip("s")))]
        for volume in spec.get("volumes") or []:
            source, _, rest = volume.partition(":")
            if source.startswith((".", "/")):
                source = str((self.path.parent / source).resolve())
            else:
                source = self._name(source)
            args += ["--volume", f"{source}:{rest}"]
        limits = ((spec.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        if "cpus" in limits:
            args += ["--cpus", str(limits["cpus"])]
        if "memory" in limits:
            args += ["--memory", str(limits["memory"]).lower()]
        if "pids" in limits:
            args += ["--pids-limit", str(limits["pids"])]
        published = []
        for port in spec.get("ports") or []:
            target = int(str(port).rsplit(":", 1)[-1])
            published.append(target)
            args += ["--publish", f"127.0.0.1::{target}"]
        command = spec.get("command") or []
        args += [self.images.get(spec["image"], spec["image"]), *([command] if isinstance(command, str) else command)]
        podman(*args)
        container = Container(self, service, name)
        for target in published:
            host = podman("port", name, str(target)).stdout.decode().split()[0]
            container.ports[target] = int(host.rsplit(":", 1)[1])
        return container

    def down(self) -> None:
        for containers in self.containers.values():
            for container in containers:
                podman("rm", "--force", "--volumes", "--time", "0", container.name, check=False, timeout=120)
        for volume in self.volumes:
            podman("volume", "rm", "--force", self._name(volume), check=False)
        for network in self.networks:
            podman("network", "rm", "--force", self._name(network), check=False)

    def dump_logs(self) -> str:
        """Every container's log, for a failing test's report."""
        parts = []
        for containers in self.containers.values():
            for container in containers:
                parts.append(f"----- {container.name}\n{container.logs()[-4000:]}")
        return "\n".join(parts)
