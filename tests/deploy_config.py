"""Reading the deployment files (Dockerfile, compose.yaml, deploy/) for the tests (no pytest import).

Neither Docker nor Kubernetes runs where the tests run: these helpers read what the files tell a
container — its environment, mounts, command, health checks — so that the tests can check them
against the code (settings, routes) and run the same settings against the real servers.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from config.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "compose.yaml"
COMPOSE_GPU = REPO / "compose.gpu.yaml"
K8S = REPO / "deploy" / "k8s"
HELM_VALUES = REPO / "deploy" / "milvus" / "values-cluster.yaml"
DATA = REPO / "tests" / "data" / "deploy"

SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


# --- Dockerfile ---------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    # directives of `# hadolint ignore=...` comments, kept for the lint test
    comments: list[str] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV KEY=VALUE pairs (the only ENV form the file uses), later ones winning."""
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                if not sep:
                    raise ValueError(f"Dockerfile:{ins.line}: ENV without '=': {ins.args}")
                out[key] = value
        return out

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON (exec) form of the last `keyword` (CMD, ENTRYPOINT, HEALTHCHECK's CMD)."""
        import json

        ins = self.all(keyword)[-1]
        args = ins.args
        if keyword == "HEALTHCHECK":
            args = args[args.index("CMD") + 3 :].strip()
        value = json.loads(args)
        assert isinstance(value, list), f"Dockerfile:{ins.line}: {keyword} is not in exec form"
        return value

    def healthcheck_options(self) -> dict[str, str]:
        ins = self.all("HEALTHCHECK")[-1]
        head = ins.args[: ins.args.index("CMD")]
        return dict(opt.removeprefix("--").split("=", 1) for opt in head.split())


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """Instructions with their continuation lines joined (comments inside them dropped)."""
    instructions: list[Instruction] = []
    comments: list[str] = []
    pending = ""
    start = 0
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        if not stripped and not pending:
            continue
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        keyword, _, args = pending.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued instruction"
    return Dockerfile(instructions, comments)


def dockerignore_excludes(path: str, patterns: list[str] | None = None) -> bool:
    """Whether Docker's build context leaves out `path` (relative, '/'-separated).

    Docker's rules: patterns match the path or one of its parent folders, `**` spans folders,
    `!` re-includes, the last matching line wins.
    """
    if patterns is None:
        patterns = [
            line.strip()
            for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = _dockerignore_regex(body.strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


# --- compose ------------------------------------------------------------------

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?|-|\?)(?P<arg>[^}]*))?\}|\$\$")


class InterpolationError(ValueError):
    pass


def interpolate(value: str, environment: dict[str, str]) -> str:
    """Compose's interpolation of one string: ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error} and $$; anything else with a `$` is refused."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        present = name in environment
        set_and_not_empty = present and environment[name] != ""
        if op == ":-":
            return environment[name] if set_and_not_empty else arg
        if op == "-":
            return environment[name] if present else arg
        if op == ":?":
            if not set_and_not_empty:
                raise InterpolationError(f"{name}: {arg}")
            return environment[name]
        if op == "?":
            if not present:
                raise InterpolationError(f"{name}: {arg}")
            return environment[name]
        return environment.get(name, "")

    result = _VAR.sub(one, value)
    leftover = _VAR.sub("", value)
    if "$" in leftover:
        raise InterpolationError(f"unsupported interpolation in {value!r}")
    return result


def service_environment(service: dict, environment: dict[str, str]) -> dict[str, str]:
    """A service's environment after interpolation; a key without a value is passed through
    from `environment` when set there and left out otherwise (compose's rule)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs: dict[str, str | None] = {}
        for item in raw:
            key, sep, value = item.partition("=")
            pairs[key] = value if sep else None
        raw = pairs
    out = {}
    for key, value in raw.items():
        if value is None:
            if key in environment:
                out[key] = environment[key]
            continue
        out[key] = interpolate(str(value), environment)
    return out


@dataclass(frozen=True)
class Mount:
    source: str  # a named volume or a host path
    target: str
    read_only: bool
    named: bool


def service_mounts(service: dict) -> list[Mount]:
    mounts = []
    for item in service.get("volumes") or []:
        if isinstance(item, dict):
            source, target = item.get("source", ""), item["target"]
            read_only = bool(item.get("read_only"))
        else:
            parts = item.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        named = not source.startswith((".", "/", "~", "$"))
        mounts.append(Mount(source, target, read_only, named))
    return mounts


def container_ports(service: dict) -> set[int]:
    """Container-side ports a service publishes (short syntax "HOST:CONTAINER" or long syntax)."""
    ports = set()
    for item in service.get("ports") or []:
        if isinstance(item, dict):
            ports.add(int(item["target"]))
        else:
            ports.add(int(str(item).split(":")[-1].split("/")[0]))
    return ports


def healthcheck_command(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    if test[0] == "CMD":
        return list(test[1:])
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    raise ValueError(f"healthcheck test {test!r}")


_URL = re.compile(r"https?://(?P<host>[^/:'\"]+):(?P<port>\d+)(?P<path>/[^'\" )]*)?")


def urls_in(words: list[str]) -> list[re.Match[str]]:
    return [m for word in words for m in _URL.finditer(word)]


# --- Kubernetes -----------------------------------------------------------------


def k8s_documents() -> dict[tuple[str, str], dict]:
    """Every object of deploy/k8s by (kind, name)."""
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_all(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in docs, f"{key} defined twice"
            docs[key] = doc
    return docs


def k8s_environment(docs: dict[tuple[str, str], dict]) -> dict[str, str]:
    """The environment the Deployment's container gets from its ConfigMap and Secret refs."""
    container = k8s_container(docs)
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env.update(docs[("ConfigMap", ref["configMapRef"]["name"])]["data"])
        else:
            secret = docs[("Secret", ref["secretRef"]["name"])]
            env.update(secret.get("stringData", {}))
    for item in container.get("env", []):
        env[item["name"]] = item["value"]
    return env


def k8s_container(docs: dict[tuple[str, str], dict]) -> dict:
    (container,) = docs[("Deployment", "imgsearch")]["spec"]["template"]["spec"]["containers"]
    return container


def k8s_mounts(docs: dict[tuple[str, str], dict]) -> list[Mount]:
    container = k8s_container(docs)
    return [
        Mount(m["name"], m["mountPath"], bool(m.get("readOnly")), True) for m in container["volumeMounts"]
    ]


def map_path(value: str, mounts: dict[str, Path]) -> str:
    """A container path under one of `mounts` (container path -> host folder) as the host path."""
    for target in sorted(mounts, key=len, reverse=True):
        if value == target or value.startswith(target.rstrip("/") + "/"):
            return str(mounts[target] / value[len(target) :].lstrip("/"))
    return value


def path_settings() -> set[str]:
    """Names of the settings whose value is a filesystem path."""
    names = set()
    for name, info in Settings.model_fields.items():
        if "Path" in str(info.annotation):
            names.add(name.upper())
    return names


def get_routes() -> set[str]:
    """Paths of the app's GET routes."""
    from app.main import ROUTE_MODULES

    paths = set()
    for module in ROUTE_MODULES:
        for route in module.router.routes:
            if "GET" in getattr(route, "methods", set()):
                paths.add(route.path)
    return paths
