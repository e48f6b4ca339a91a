"""The cluster/ deployment files, checked against the code they run.

Nothing here needs a cluster, Docker or a network. Every YAML under cluster/ is parsed, and every job that
the KubeRay manifests (RayJob, RayCronJob, CronJob templates) and cluster/README.md start is checked
against the real code:

  * `python -m jobs.X` names a file jobs/X.py, and the job's own argument parser accepts the arguments;
  * --config files exist and, with every --set, load through embedlib.config (unknown keys are errors);
  * the cluster a RayJob brings up can run what its config asks for (GPUs for Ray Train workers and for
    embedding actors, CPUs left for Ray tasks), and GPU worker groups start non-empty (jobs.embed picks
    GPU or CPU from the GPUs present when it starts);
  * every RayCluster, RayJob and RayCronJob (and the RayJob templates of the CronJob fallback) is valid
    against KubeRay's own CRD schemas (cluster/kuberay/crds/, see SOURCE.md there), made strict where the
    API server would silently prune an unknown field; names pass KubeRay's length and DNS rules;
  * the nightly embedding writes into one output root every night (incremental), the weekly retrain into a
    new folder per week named from the SCHEDULED time (embedlib.schedule, or the fallback's last-fire.sh,
    checked against each other), so retries resume; no scheduled run can outlive the interval to the next
    one, and compaction ends before the next nightly run; RayJobs delete their clusters; entrypoints write
    to object storage;
  * every RayJob hands its own name to the driver as EMBEDLIB_LEASE_OWNER (KubeRay's submitter command is
    replayed through bash with a stand-in `ray`); object-store credentials come from a Secret through
    envFrom, never from runtimeEnvYAML; the fallback CronJob fails (exit 75) when it skips a night; the
    RayJob history CronJob deletes only old finished RayJobs;
  * every Ray image, the Dockerfile and the launcher use pyproject's Ray (and torch) pins.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from embedlib import config as embedlib_config
from shell_commands import Command, job_commands, parse_with_job_parser
from embedlib.schedule import last_fire_time, next_fire_time

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
CONFIGS = CLUSTER / "configs"
IMAGE_CONFIG_DIR = "/opt/embedlib/configs"  # where cluster/Dockerfile puts cluster/configs/
OBJECT_STORE = ("s3://", "gs://")
URI_FLAGS = ("--input", "--output", "--model", "--workdir", "--samples", "--root")
# What makes a scheduled run's paths its own: its SCHEDULED time (never `$(date ...)`, the submission time).
RUN_VARYING = ("$(python -m embedlib.schedule ", "__RUN_DATE__", "__RUN_WEEK__")
RAY_KINDS = {"RayCluster", "RayJob", "RayCronJob"}

CRDS = CLUSTER / "kuberay" / "crds"  # KubeRay's CRD schemas for the release the manifests target (SOURCE.md)
CRD_FILES = {"RayCluster": "ray.io_rayclusters.v1.json", "RayJob": "ray.io_rayjobs.v1.json",
             "RayCronJob": "ray.io_raycronjobs.v1.json"}
# What the CronJob fallback's script substitutes into its RayJob templates (date -u +%Y-%m-%d, +%G-w%V).
TEMPLATE_VALUES = {"__RUN_DATE__": "2026-11-24", "__RUN_WEEK__": "2026-w48"}


# -- pyproject pins ---------------------------------------------------------------------------------------

def _pyproject() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def _requirement_name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].strip().lower()


def _exact_pin(requirements: list[str], name: str) -> str:
    for req in requirements:
        if _requirement_name(req) == name:
            match = re.search(r"==\s*([^\s,;]+)", req)
            assert match, f"{name} is not pinned exactly in {req!r}"
            return match.group(1)
    raise AssertionError(f"{name} is not a dependency")


PROJECT_DEPS: list[str] = _pyproject()["project"]["dependencies"]
RAY_VERSION = _exact_pin(PROJECT_DEPS, "ray")
TORCH_VERSION = _exact_pin(PROJECT_DEPS, "torch")
PYTHON_TAG = "py" + re.search(r"(\d+)\.(\d+)", _pyproject()["project"]["requires-python"]).group().replace(".", "")


# -- the YAML under cluster/ ------------------------------------------------------------------------------

NOT_K8S = ("launcher", "helm")  # cluster/ folders whose YAML is not Kubernetes objects (ray up, Helm values)


def yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, document) of every Kubernetes object under cluster/, including RayJob templates kept in
    ConfigMaps (the CronJob fallback creates RayJobs from those)."""
    for path in yaml_files():
        if set(NOT_K8S) & set(path.parts):
            continue
        for i, doc in enumerate(load_documents(path)):
            where = f"{path.relative_to(REPO)}[{i}] {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            yield where, doc
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith((".yaml", ".yml")):
                        for j, inner in enumerate(d for d in yaml.safe_load_all(text) if d is not None):
                            yield f"{where} data[{key}][{j}] {inner.get('kind')}", inner


@dataclass
class JobSpec:
    where: str
    spec: dict[str, Any]  # a RayJob spec
    scheduled: bool  # created again and again by a schedule (RayCronJob, or a CronJob's template)
    schedule: str | None = None  # the cron line that creates it


def cronjob_script(cron: dict[str, Any]) -> str:
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    return " ".join(container.get("command", []) + container.get("args", []))


def template_schedules() -> dict[str, str]:
    """ConfigMap template key -> schedule of the CronJob whose script creates RayJobs from it."""
    out = {}
    for _, doc in k8s_documents():
        if doc.get("kind") == "CronJob":
            for key in re.findall(r"/([\w.-]+\.ya?ml)\b", cronjob_script(doc)):
                out[key] = doc["spec"]["schedule"]
    return out


def rayjob_specs() -> list[JobSpec]:
    specs = []
    schedules = template_schedules()
    for where, doc in k8s_documents():
        if doc.get("kind") == "RayJob":
            key = re.search(r"data\[([^\]]+)\]", where)  # a template the CronJob fallback creates RayJobs from
            specs.append(JobSpec(where, doc["spec"], scheduled=bool(key),
                                 schedule=schedules.get(key.group(1)) if key else None))
        elif doc.get("kind") == "RayCronJob":
            specs.append(JobSpec(where, doc["spec"]["jobTemplate"], scheduled=True, schedule=doc["spec"]["schedule"]))
    return specs


def ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    out = [(w, d["spec"]) for w, d in k8s_documents() if d.get("kind") == "RayCluster"]
    out += [(j.where, j.spec["rayClusterSpec"]) for j in rayjob_specs() if "rayClusterSpec" in j.spec]
    return out


def pod_templates(cluster_spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", cluster_spec["headGroupSpec"]["template"]
    for group in cluster_spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


# -- commands: `python -m jobs.X ...` ---------------------------------------------------------------------

def entrypoint_commands() -> list[tuple[JobSpec, Command]]:
    out = []
    for job in rayjob_specs():
        commands = job_commands(job.spec.get("entrypoint", ""))
        assert commands, f"{job.where}: entrypoint runs no `python -m jobs.<name>`: {job.spec.get('entrypoint')!r}"
        out += [(job, c) for c in commands]
    return out


def readme_commands() -> list[Command]:
    text = (CLUSTER / "README.md").read_text()
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "python -m jobs." in line:
                out += job_commands(line)
    return out


def config_path(value: str) -> Path:
    """A --config value as a path in this checkout (image paths map back to cluster/configs/)."""
    if value.startswith(IMAGE_CONFIG_DIR + "/"):
        return CONFIGS / value.removeprefix(IMAGE_CONFIG_DIR + "/")
    return REPO / value


def effective_config(command: Command) -> embedlib_config.Config:
    """The Config the job would build. (jobs.embed starts from the checkpoint's config with [input] and
    [embed] reset to the defaults, so its input/embed sections are exactly these.)"""
    configs = command.values("--config")
    assert len(configs) <= 1, f"jobs.{command.module}: --config given {len(configs)} times"
    path = config_path(configs[0]) if configs else None
    assert path is None or path.is_file(), f"jobs.{command.module}: --config {configs[0]} -> {path} does not exist"
    return embedlib_config.load(str(path) if path else None, command.overrides)


# -- resources --------------------------------------------------------------------------------------------

def cpu_quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass
class Group:
    name: str
    min: int
    max: int
    cpus: float  # per pod, as Ray will see them
    gpus: int  # per pod


def worker_groups(cluster_spec: dict[str, Any]) -> list[Group]:
    groups = []
    for g in cluster_spec.get("workerGroupSpecs", []):
        container = g["template"]["spec"]["containers"][0]
        limits = container.get("resources", {}).get("limits", {})
        params = g.get("rayStartParams") or {}
        cpus = cpu_quantity(params.get("num-cpus", limits.get("cpu", 0)))
        gpus = int(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        hosts = int(g.get("numOfHosts", 1))
        replicas = g.get("replicas", g.get("minReplicas", 0))
        assert g.get("minReplicas", 0) <= replicas <= g["maxReplicas"], f"group {g['groupName']}: replicas out of [min, max]"
        groups.append(Group(g["groupName"], g.get("minReplicas", 0) * hosts, g["maxReplicas"] * hosts, cpus, gpus))
    return groups


def check_job_fits(cfg: embedlib_config.Config, module: str, groups: list[Group], where: str) -> None:
    gpu_groups = [g for g in groups if g.gpus]
    gpus_max = sum(g.max * g.gpus for g in groups)
    cpus_max = sum(g.max * g.cpus for g in groups)
    if module == "train":
        held = cfg.train.num_workers * cfg.train.cpus_per_worker
        if cfg.train.use_gpu:
            assert cfg.train.num_workers <= gpus_max, \
                f"{where}: train.num_workers={cfg.train.num_workers} GPU workers, but the cluster has {gpus_max} GPUs"
            for g in gpu_groups:
                assert g.cpus >= g.gpus * cfg.train.cpus_per_worker, \
                    f"{where}: a '{g.name}' pod has {g.cpus} CPUs for {g.gpus} workers of {cfg.train.cpus_per_worker}"
        else:
            assert any(g.cpus >= cfg.train.cpus_per_worker for g in groups), \
                f"{where}: no worker pod has train.cpus_per_worker={cfg.train.cpus_per_worker} CPUs"
        # Ray Train workers hold their CPUs for the whole run; Ray tasks (rasterizing, per-block work) need some.
        assert cpus_max > held, f"{where}: Ray Train holds {held} of {cpus_max} CPUs, none left for Ray tasks"
    if module == "embed":
        if gpu_groups:
            assert sum(g.min * g.gpus for g in groups) >= 1, \
                f"{where}: jobs.embed picks GPUs only if one is up when it starts; the GPU group may start empty"
            assert cfg.embed.num_actors <= gpus_max, \
                f"{where}: embed.num_actors={cfg.embed.num_actors} GPU actors, but the cluster has {gpus_max} GPUs"
            assert cpus_max >= 1, f"{where}: no CPUs for the rasterize tasks"
        else:
            assert cpus_max >= cfg.embed.num_actors + 1, \
                f"{where}: {cfg.embed.num_actors} CPU actors and rasterize tasks need more than {cpus_max} CPUs"


# -- images -----------------------------------------------------------------------------------------------

def ray_version_of_image(image: str) -> str | None:
    """The Ray version an image is built on: rayproject/ray:<ver>-... or our embedlib:<x>-ray<ver>-..."""
    name, _, tag = image.rpartition(":")
    if re.search(r"(^|/)rayproject/ray(-ml|-llm)?$", name):
        match = re.match(r"(\d+\.\d+\.\d+)", tag)
        return match.group(1) if match else None
    if name.rsplit("/", 1)[-1] == "embedlib":
        match = re.search(r"ray(\d+\.\d+\.\d+)", tag)
        return match.group(1) if match else None
    return None


def is_gpu_image(image: str) -> bool:
    return bool(re.search(r"-(gpu|cu\d+)\b", image.rpartition(":")[2]))



# -- KubeRay CRD schemas ----------------------------------------------------------------------------------

SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf")
PRESERVE = "x-kubernetes-preserve-unknown-fields"
# Root metadata is not in a CRD's schema: the API server handles it as ObjectMeta, whose unknown fields it drops.
OBJECT_META = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {
        "name": {"type": "string"}, "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}


def strict(schema: Any) -> Any:
    """A copy of a structural CRD schema in which every object the API server would prune an unknown field
    from (no additionalProperties, no x-kubernetes-preserve-unknown-fields) rejects unknown fields."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in SUBSCHEMA_LISTS:
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    if out.get("type") == "object" and "additionalProperties" not in out and not out.get(PRESERVE):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str):
    import jsonschema

    data = json.loads((CRDS / CRD_FILES[kind]).read_text())
    assert data["kind"] == kind and data["version"] == "v1", data["kind"]
    schema = strict(data["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def k8s_path(parts) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts) or "."


def unchecked_rules(schema: dict, value: Any, path: tuple = ()) -> Iterator[str]:
    """What jsonschema leaves out, walked along the manifest: fields that carry CEL rules
    (x-kubernetes-validations, evaluated only by the API server) and duplicate keys in lists that Kubernetes
    merges by key (x-kubernetes-list-type: map) or treats as sets."""
    if "x-kubernetes-validations" in schema:
        rules = "; ".join(r["rule"] for r in schema["x-kubernetes-validations"])
        yield f"{k8s_path(path)}: carries CEL rules this test cannot evaluate ({rules})"
    if isinstance(value, dict):
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                yield from unchecked_rules(sub, item, path + (key,))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "map":
            keys = [tuple(json.dumps(v.get(k)) for k in schema["x-kubernetes-list-map-keys"]) for v in value]
            if len(keys) != len(set(keys)):
                yield f"{k8s_path(path)}: duplicate {schema['x-kubernetes-list-map-keys']} in a list Kubernetes merges by key"
        elif list_type == "set" and len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
            yield f"{k8s_path(path)}: duplicate items in a set"
        for i, item in enumerate(value):
            yield from unchecked_rules(schema["items"], item, path + (i,))


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Everything KubeRay's CRD schema says about a RayCluster/RayJob/RayCronJob, as readable lines."""
    kind = doc.get("kind")
    validator = crd_validator(kind)
    errors = [f"{k8s_path(e.absolute_path)}: {e.message}"
              for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
    raw = json.loads((CRDS / CRD_FILES[kind]).read_text())["openAPIV3Schema"]
    errors += list(unchecked_rules(raw["properties"]["spec"], doc.get("spec", {}), ("spec",)))
    return errors


def rendered_ray_objects() -> list[tuple[str, dict[str, Any]]]:
    """Every RayCluster/RayJob/RayCronJob as the API server receives it: ConfigMap templates rendered with
    the values the CronJob fallback's script substitutes."""
    out = []
    for where, doc in k8s_documents():
        if doc.get("kind") not in RAY_KINDS:
            continue
        if "data[" in where:
            text = yaml.safe_dump(doc)
            for placeholder, value in TEMPLATE_VALUES.items():
                text = text.replace(placeholder, value)
            doc = yaml.safe_load(text)
        out.append((where, doc))
    return out


def is_dns1035_label(name: str) -> bool:
    return bool(re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)) and len(name) <= 63


SCHEDULE_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)  # where schedules are sampled from (a Thursday)


def fire_times(schedule: str, days: int = 63) -> list[datetime]:
    """The times a schedule fires in `days` days from SCHEDULE_EPOCH, as KubeRay's and Kubernetes' parser
    (robfig/cron) computes them: embedlib.schedule."""
    out, t = [], SCHEDULE_EPOCH
    while (t := next_fire_time(schedule, t)) < SCHEDULE_EPOCH + timedelta(days=days):
        out.append(t)
    return out


def cron_interval_seconds(schedule: str) -> int:
    """The shortest time between two runs of a schedule."""
    fires = fire_times(schedule)
    assert len(fires) >= 2, f"{schedule!r} fires less than twice in {len(fires)} weeks"
    return int(min((b - a).total_seconds() for a, b in zip(fires, fires[1:])))


def worst_case_seconds(spec: dict[str, Any]) -> int:
    """How long a RayJob can live at most: KubeRay restarts the activeDeadlineSeconds clock for every retry
    (initRayJobStatusIfNeed sets StartTime), never retries an attempt that hit the deadline, and keeps a
    finished cluster for ttlSecondsAfterFinished."""
    return (spec["activeDeadlineSeconds"] + spec.get("ttlSecondsAfterFinished", 0)) * (spec.get("backoffLimit", 0) + 1)


# =========================================================================================================
# Tests
# =========================================================================================================

@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_yaml_parses(path: Path) -> None:
    docs = load_documents(path)
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
        if not set(NOT_K8S) & set(path.parts):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: not a Kubernetes object: {list(doc)}"


def test_manifests_cover_the_jobs() -> None:
    kinds = [d.get("kind") for _, d in k8s_documents()]
    assert "RayCluster" in kinds
    modules = {c.module for _, c in entrypoint_commands()}
    assert {"train", "embed"} <= modules, f"RayJobs run {modules}"
    scheduled = {c.module for j, c in entrypoint_commands() if j.scheduled}
    assert {"train", "embed"} <= scheduled, f"scheduled runs: {scheduled} (want a nightly embed and a weekly train)"


def test_kuberay_objects_are_ray_io_v1() -> None:
    for where, doc in k8s_documents():
        if doc.get("kind") in RAY_KINDS:
            assert doc["apiVersion"] == "ray.io/v1", f"{where}: apiVersion {doc['apiVersion']}"
    for where, spec in ray_cluster_specs():
        for group in spec.get("workerGroupSpecs", []):
            assert group["minReplicas"] <= group["maxReplicas"], f"{where}: {group['groupName']}: min > max"


@pytest.mark.parametrize("where,doc", rendered_ray_objects(), ids=lambda x: x if isinstance(x, str) else "")
def test_kuberay_objects_match_the_crd_schemas(where: str, doc: dict[str, Any]) -> None:
    """KubeRay 1.6's own schemas, strict where the API server would silently prune unknown fields: a
    misspelt or misplaced field anywhere, pod templates included, fails here instead of vanishing."""
    errors = schema_errors(doc)
    assert not errors, f"{where}:\n  " + "\n  ".join(errors)


def test_schema_check_catches_what_kubernetes_would_prune_or_reject() -> None:
    """The check above is only worth something if it fails on the mistakes it is there for."""
    base = load_documents(CLUSTER / "kuberay" / "rayjob-embed.yaml")[0]
    assert schema_errors(base) == []
    mutations = {
        "spec.entryPoint": lambda d: d["spec"].__setitem__("entryPoint", d["spec"]["entrypoint"]),
        "metadata.label": lambda d: d["metadata"].__setitem__("label", {"a": "b"}),
        "workerGroupSpecs[0].template.spec.containers[0].resource":
            lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
            .__setitem__("resource", {"limits": {"cpu": "1"}}),
        "headGroupSpec.rayStartParams num-cpus as a number":
            lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0),
        "workerGroupSpecs[0] without groupName":
            lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"),
        "backoffLimit as a string": lambda d: d["spec"].__setitem__("backoffLimit", "2"),
        "autoscalerOptions.upscalingMode not in the enum":
            lambda d: d["spec"]["rayClusterSpec"].__setitem__("autoscalerOptions", {"upscalingMode": "Fast"}),
        "a memory limit that is no quantity":
            lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
            ["resources"]["limits"].__setitem__("memory", "16 GB"),
        "two container ports 6379/TCP":
            lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
            ["ports"].append({"containerPort": 6379, "name": "gcs-again"}),
        "managedBy (a CEL-checked field)": lambda d: d["spec"].__setitem__("managedBy", "ray.io/kuberay-operator"),
    }
    for name, mutate in mutations.items():
        doc = copy.deepcopy(base)
        mutate(doc)
        assert schema_errors(doc), f"a RayJob with {name} passed the schema check"
    # where a schema preserves unknown fields, Kubernetes keeps them, and so does strict()
    loose = strict({"type": "object", "properties": {"a": {"type": "object", PRESERVE: True}}})
    assert "additionalProperties" not in loose["properties"]["a"] and loose["additionalProperties"] is False


def test_kuberay_names() -> None:
    """KubeRay's own metadata rules (ray-operator/controllers/ray/utils/validation.go, constant.go): a RayJob
    name of at most 47 characters, a RayCluster name of at most 53, both DNS-1035 labels. A RayCronJob's
    RayJobs are named <name>-<5 random characters>."""
    for where, doc in rendered_ray_objects():
        name, kind = doc["metadata"]["name"], doc["kind"]
        limit = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 47 - 6}[kind]
        assert is_dns1035_label(name) and len(name) <= limit, f"{where}: {kind} name {name!r} (at most {limit}, DNS-1035)"


def test_entrypoint_modules_exist() -> None:
    for job, command in entrypoint_commands():
        path = REPO / "jobs" / f"{command.module}.py"
        assert path.is_file(), f"{job.where}: `python -m jobs.{command.module}` but {path} does not exist"


def test_entrypoints_parse_with_the_jobs_own_parsers() -> None:
    for job, command in entrypoint_commands():
        parse_with_job_parser(command)


def test_entrypoint_configs_and_overrides_load() -> None:
    for job, command in entrypoint_commands():
        for item in command.overrides:  # each --set on its own, so that a bad one is named
            embedlib_config.from_dict(embedlib_config.parse_overrides([item]))
        cfg = effective_config(command)
        assert cfg is not None, job.where


def test_embed_entrypoints_leave_model_and_raster_to_the_checkpoint() -> None:
    """jobs.embed takes [model] and [raster] from the checkpoint and exits if a config changes them, so
    an embed config that sets them fits only the checkpoints that happen to agree."""
    from_checkpoint = {"model", "raster"}
    for job, command in entrypoint_commands():
        if command.module != "embed":
            continue
        for value in command.values("--config"):
            with open(config_path(value), "rb") as fh:
                sections = set(tomllib.load(fh))
            assert not sections & from_checkpoint, f"{job.where}: {value} sets {sections & from_checkpoint}"
        sections = set(embedlib_config.parse_overrides(command.overrides))
        assert not sections & from_checkpoint, f"{job.where}: --set {sections & from_checkpoint}"


def test_entrypoints_are_single_shell_lines() -> None:
    # KubeRay pastes the entrypoint into `bash -c "... ray job submit ... -- ENTRYPOINT ; fi"`: a newline
    # would end the command early. Use a folded YAML scalar (>-) with every line at the same indentation.
    for job in rayjob_specs():
        assert "\n" not in job.spec["entrypoint"].strip(), f"{job.where}: entrypoint spans several lines"


def test_entrypoints_use_object_storage() -> None:
    # Pods are ephemeral: inputs, outputs, checkpoints and Ray Train state must outlive them.
    for job, command in entrypoint_commands():
        for flag in URI_FLAGS:
            for value in command.values(flag):
                assert value.startswith(OBJECT_STORE), f"{job.where}: {flag} {value} is not object storage"


def test_nightly_embedding_writes_one_incremental_root() -> None:
    """Every scheduled embedding run (RayCronJob or CronJob fallback) reads the whole corpus and writes into
    the same output root: the root is incremental (only new contents are embedded) and holds every night's
    runs. A date in --output would start from nothing every night and re-embed the corpus."""
    runs = set()
    for job, command in entrypoint_commands():
        if job.scheduled and command.module == "embed":
            for flag in ("--output", "--input", "--model"):
                values = command.values(flag)
                assert len(values) == 1, f"{job.where}: {flag} given {len(values)} times"
                assert not any(v in values[0] for v in RUN_VARYING), f"{job.where}: {flag} {values[0]} changes per run"
            runs.add((command.values("--output")[0], command.values("--input")[0], command.values("--model")[0]))
    assert len(runs) == 1, f"scheduled embedding runs disagree on output/input/model: {sorted(runs)}"


def test_weekly_retrain_writes_a_new_run_per_week() -> None:
    # Ray Train resumes a run with the same --name and --workdir: a fixed name would resume week 1 forever.
    for job, command in entrypoint_commands():
        if job.scheduled and command.module == "train":
            for flag in ("--output", "--workdir", "--name"):
                for value in command.values(flag) or pytest.fail(f"{job.where}: no {flag}"):
                    assert any(v in value for v in RUN_VARYING), f"{job.where}: {flag} {value} is the same every week"


def test_scheduled_runs_cannot_overlap_the_next_one() -> None:
    """RayCronJob (KubeRay 1.6) has no concurrencyPolicy, and a CronJob's policy only covers its creator pods.
    So a scheduled RayJob's whole life must fit in its interval (worst_case_seconds). That is also what keeps
    a weekly run's retries inside the week its name comes from."""
    scheduled = [job for job in rayjob_specs() if job.scheduled]
    assert scheduled
    for job in scheduled:
        assert job.schedule, f"{job.where}: no schedule found for this template"
        assert job.spec.get("activeDeadlineSeconds"), \
            f"{job.where}: no activeDeadlineSeconds: a stuck run would overlap every later one"
        worst = worst_case_seconds(job.spec)
        interval = cron_interval_seconds(job.schedule)
        assert worst < interval, f"{job.where}: up to {worst} s of RayJob for a schedule every {interval} s"


REAL_DATE = shutil.which("date")


def stub_bin(tmp_path: Path) -> Path:
    """A stand-in kubectl (answers from STUB_* variables, records its calls) and a `date` whose clock is
    STUB_NOW (seconds since 1970): `date -u +%s` answers it, every other use is the real date."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "kubectl").write_text(
        '#!/bin/sh\n'
        'echo "$*" >> "$STUB_DIR/calls"\n'
        'if [ "$1 $2" = "get rayjob" ] && [ "$3" = "-l" ]; then printf "%s" "$STUB_LIST"; exit 0; fi\n'
        'if [ "$1 $2" = "get rayjob" ]; then case " $STUB_EXISTING " in *" $3 "*) printf Running; exit 0;; esac; exit 1; fi\n'
        'if [ "$1 $2" = "create -f" ]; then cat > "$STUB_DIR/created.yaml"; exit 0; fi\n'
        'if [ "$1 $2" = "delete rayjob" ]; then echo "$3" >> "$STUB_DIR/deleted"; exit 0; fi\n'
        'exit 2\n')
    (bin_dir / "date").write_text(
        '#!/bin/sh\n'
        f'if [ -n "${{STUB_NOW:-}}" ] && [ "$*" = "-u +%s" ]; then echo "$STUB_NOW"; exit 0; fi\n'
        f'exec {REAL_DATE} "$@"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    return bin_dir


def creator(name: str) -> dict[str, Any]:
    return next(d for d in creator_cronjobs() if d["metadata"]["name"] == name)


def templates_dir(tmp_path: Path) -> Path:
    configmap = next(d for _, d in k8s_documents() if d.get("kind") == "ConfigMap")
    templates = tmp_path / "templates"
    templates.mkdir(exist_ok=True)
    for key, text in configmap["data"].items():
        (templates / key).write_text(text)
    return templates


def run_creator(tmp_path: Path, name: str, now: datetime, existing: str = "", listing: str = "",
                shell: str = "sh") -> tuple[int, str, Path]:
    """Run a fallback CronJob's script for real (sh, date, sed) against the stand-ins, at time `now`."""
    script = creator(name)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    script = script.replace("/templates/", f"{templates_dir(tmp_path)}/")
    state = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    state.mkdir()
    env = {"PATH": f"{stub_bin(tmp_path)}:{os.environ['PATH']}", "STUB_DIR": str(state), "STUB_EXISTING": existing,
           "STUB_LIST": listing, "STUB_NOW": str(int(now.timestamp()))}
    proc = subprocess.run([shell, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr, state / "created.yaml"


def test_cronjob_fallback_script_forbids_overlap(tmp_path: Path) -> None:
    """Run the nightly CronJob's script for real against a stand-in kubectl. A night it skips because an
    earlier nightly RayJob is still active is an error (exit 75), and the Job fails at once."""
    now = datetime(2026, 11, 24, 9, 30, tzinfo=timezone.utc)
    rc, out, created = run_creator(tmp_path, "embed-nightly", now,
                                   listing="embed-nightly-2026-11-22=Complete embed-nightly-2026-11-23=Failed ")
    rayjob = yaml.safe_load(created.read_text())
    assert rc == 0 and rayjob["metadata"]["name"] == "embed-nightly-2026-11-24" and not schema_errors(rayjob), out
    rc, out, created = run_creator(tmp_path, "embed-nightly", now,
                                   listing="embed-nightly-2026-11-23=Complete embed-nightly-2026-11-24=Running ")
    assert rc == 75 and not created.exists() and "embed-nightly-2026-11-24 still active (Running)" in out, out
    rc, out, created = run_creator(tmp_path, "embed-nightly", now, listing="embed-nightly-2026-11-24= ")  # no status yet
    assert rc == 75 and not created.exists() and "(New)" in out, out
    rc, out, created = run_creator(tmp_path, "embed-nightly", now, existing="embed-nightly-2026-11-24")
    assert rc == 0 and not created.exists() and "exists already" in out, out
    # before 02:00 the night is yesterday's: a manual trigger at 01:00 finds (or recreates) that RayJob
    rc, out, created = run_creator(tmp_path, "embed-nightly", now.replace(hour=1))
    assert rc == 0 and yaml.safe_load(created.read_text())["metadata"]["name"] == "embed-nightly-2026-11-23", out
    # ... and the Job fails at once on 75 (and on 2, a broken script), instead of retrying
    job = creator("embed-nightly")["spec"]["jobTemplate"]["spec"]
    container = job["template"]["spec"]["containers"][0]["name"]
    fail_now = [r for r in job.get("podFailurePolicy", {}).get("rules", []) if r["action"] == "FailJob"]
    assert any(r["onExitCodes"]["operator"] == "In" and {2, 75} <= set(r["onExitCodes"]["values"])
               and r["onExitCodes"].get("containerName") == container for r in fail_now), job.get("podFailurePolicy")
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it


def schedule_in_script(cron: dict[str, Any]) -> str:
    match = re.search(r"^\s*SCHEDULE='([^']+)'", cronjob_script_text(cron), flags=re.M)
    assert match, f"CronJob {cron['metadata']['name']}: no SCHEDULE='...' in its script"
    return match.group(1)


def cronjob_script_text(cron: dict[str, Any]) -> str:
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]


def shells() -> list[str]:
    """The POSIX shells on this machine that the kubectl image's /bin/sh might be."""
    return [s for s in ("sh", "dash", "bash", "busybox") if shutil.which(s)]


@pytest.mark.parametrize("name", ["embed-nightly", "train-weekly", "compact-weekly"])
def test_fallback_last_fire_agrees_with_embedlib_schedule(tmp_path: Path, name: str) -> None:
    """last-fire.sh (the creator pods have no Python) and embedlib.schedule name a run after the same
    scheduled time, around the fire times and at random times."""
    cron = creator(name)
    schedule = schedule_in_script(cron)
    assert schedule == cron["spec"]["schedule"] and cron["spec"].get("timeZone") in ("Etc/UTC", "UTC"), \
        f"CronJob {name}: the script computes the runs of {schedule!r} (UTC)"
    rng = random.Random(name)
    nows = []
    for fire in fire_times(schedule, days=21):
        nows += [fire - timedelta(seconds=1), fire, fire + timedelta(seconds=59), fire + timedelta(hours=21)]
    nows += [SCHEDULE_EPOCH + timedelta(seconds=rng.randrange(400 * 86400)) for _ in range(40)]
    templates = templates_dir(tmp_path)
    loop = "".join(f"STUB_NOW={int(n.timestamp())}; export STUB_NOW; last_fire '{schedule}'\n" for n in nows)
    for shell in shells():
        cmd = [shell, "sh", "-c"] if shell == "busybox" else [shell, "-c"]
        proc = subprocess.run(cmd + [f"set -eu\n. {templates}/last-fire.sh\n{loop}"], capture_output=True, text=True,
                              env={"PATH": f"{stub_bin(tmp_path)}:{os.environ['PATH']}"}, timeout=120)
        assert proc.returncode == 0, (shell, proc.stderr)
        got = [int(line) for line in proc.stdout.split()]
        want = [int(last_fire_time(schedule, n).timestamp()) for n in nows]
        assert got == want, f"{shell}: last_fire disagrees with embedlib.schedule for {schedule!r}"
    # and it refuses what it cannot compute (exit 2), rather than naming a run wrongly
    for bad in ("0 2 1 * *", "0 2 * * 1-5", "*/5 2 * * *", "08 2 * * *", "0 24 * * *", "0 2 * *"):
        proc = subprocess.run(["sh", "-c", f". {templates}/last-fire.sh; last_fire '{bad}'"], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and "unsupported" in proc.stderr, (bad, proc.stdout, proc.stderr)


def test_fallback_weekly_retry_keeps_its_week(tmp_path: Path) -> None:
    """The bug of issue 17: the weekly retrain fired Sunday 03:00 and triggered again after Monday 00:00 UTC
    must find the same week's RayJob, not create next week's."""
    fired = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)  # a Sunday: ISO week 2026-w47
    names = set()
    for later in (timedelta(minutes=5), timedelta(hours=21, minutes=30), timedelta(days=6, hours=23, minutes=59)):
        rc, out, created = run_creator(tmp_path, "train-weekly", fired + later)
        assert rc == 0, out
        rayjob = yaml.safe_load(created.read_text())
        names.add(rayjob["metadata"]["name"])
        command = job_commands(rayjob["spec"]["entrypoint"])[0]
        assert command.values("--name") == ["weekly-2026-w47"], command.argv
        assert command.values("--workdir") == ["s3://YOUR_BUCKET/embedlib/train/week=2026-w47"], command.argv
    assert names == {"train-weekly-2026-w47"}
    rc, out, created = run_creator(tmp_path, "train-weekly", fired + timedelta(days=7))
    assert rc == 0 and yaml.safe_load(created.read_text())["metadata"]["name"] == "train-weekly-2026-w48", out


def test_rayjob_history_prunes_only_old_finished_rayjobs(tmp_path: Path) -> None:
    docs = [d for _, d in k8s_documents()]
    cron = next(d for d in docs if d.get("kind") == "CronJob" and d["metadata"]["name"] == "rayjob-history")
    script = cronjob_script_text(cron)
    keep = int(re.search(r"^\s*KEEP=(\d+)", script, flags=re.M).group(1))
    # every schedule's RayJobs are covered: the RayCronJobs' label and the fallback templates' label
    for where, doc in k8s_documents():
        if doc.get("kind") == "RayCronJob":
            assert f"ray.io/cronjob-name={doc['metadata']['name']}" in script, where
        elif doc.get("kind") == "RayJob" and "data[" in where:
            assert f"embedlib/schedule={doc['metadata']['labels']['embedlib/schedule']}" in script, where
    # RBAC: it may list and delete RayJobs
    account = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {b["roleRef"]["name"] for b in docs if b.get("kind") == "RoleBinding"
             and any(s["name"] == account for s in b["subjects"])}
    verbs = {v for r in docs if r.get("kind") == "Role" and r["metadata"]["name"] in roles
             for rule in r["rules"] if "rayjobs" in rule["resources"] for v in rule["verbs"]}
    assert {"list", "delete"} <= verbs, verbs
    # oldest first, as --sort-by=.metadata.creationTimestamp lists them
    states = ["Complete"] * (keep + 3) + ["Failed", "Running", "Complete", "Suspended", "ValidationFailed", ""]
    items = [(f"embed-nightly-{i:05d}", s) for i, s in enumerate(states)]
    state = tmp_path / "state"
    state.mkdir()
    env = {"PATH": f"{stub_bin(tmp_path)}:{os.environ['PATH']}", "STUB_DIR": str(state),
           "STUB_LIST": " ".join(f"{n}={s}" for n, s in items) + " "}
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    deleted = (state / "deleted").read_text().split() if (state / "deleted").exists() else []
    finished = [n for n, s in items if s in ("Complete", "Failed", "ValidationFailed")]
    selectors = len(re.findall(r"(?:ray\.io/cronjob-name|embedlib/schedule)=", script))
    # the stand-in answers every selector with the same list: each pass deletes the same oldest ones
    assert deleted == finished[: len(finished) - keep] * selectors, deleted
    assert not {n for n, s in items if s not in ("Complete", "Failed", "ValidationFailed")} & set(deleted)


def test_rayjobs_delete_their_clusters() -> None:
    for job in rayjob_specs():
        if "rayClusterSpec" in job.spec:
            assert job.spec.get("shutdownAfterJobFinishes") is True, f"{job.where}: the Ray cluster would outlive the job"
            assert "ttlSecondsAfterFinished" in job.spec, f"{job.where}: no ttlSecondsAfterFinished"
            assert job.spec.get("backoffLimit", 0) >= 1, f"{job.where}: no retry (the jobs resume; let them)"


def test_runtime_env_yaml() -> None:
    for job in rayjob_specs():
        text = job.spec.get("runtimeEnvYAML")
        if text is None:
            continue
        env = yaml.safe_load(text)
        assert isinstance(env, dict), f"{job.where}: runtimeEnvYAML is not a mapping"
        for key, value in (env.get("env_vars") or {}).items():
            assert isinstance(value, str), f"{job.where}: env_vars.{key} must be a string (Ray rejects {value!r})"


def test_rayjob_clusters_fit_their_jobs() -> None:
    for job, command in entrypoint_commands():
        if "rayClusterSpec" in job.spec:
            check_job_fits(effective_config(command), command.module, worker_groups(job.spec["rayClusterSpec"]),
                           job.where)


def test_standalone_cluster_fits_the_configs() -> None:
    """raycluster.yaml is where users `ray job submit` with the configs of cluster/configs/."""
    for where, doc in k8s_documents():
        if doc.get("kind") != "RayCluster":
            continue
        groups = worker_groups(doc["spec"])
        for path in sorted(CONFIGS.glob("*.toml")):
            cfg = embedlib_config.load(str(path))
            check_job_fits(cfg, "train", groups, f"{where} with {path.name}")
            check_job_fits(cfg, "embed", groups, f"{where} with {path.name}")


def test_gpu_groups() -> None:
    for where, spec in ray_cluster_specs():
        for group in spec.get("workerGroupSpecs", []):
            container = group["template"]["spec"]["containers"][0]
            resources = container.get("resources", {})
            gpus = resources.get("limits", {}).get("nvidia.com/gpu")
            if gpus is None:
                continue
            assert int(gpus) >= 1, f"{where}: {group['groupName']}"
            # Extended resources: a request, if given, must equal the limit.
            assert resources.get("requests", {}).get("nvidia.com/gpu", gpus) == gpus, f"{where}: {group['groupName']}"
            # A CPU build of torch on a GPU node would silently run on the CPU.
            assert is_gpu_image(container["image"]), f"{where}: GPU group '{group['groupName']}' runs {container['image']}"


def test_images_and_ray_versions_match_pyproject() -> None:
    for where, spec in ray_cluster_specs():
        assert spec.get("rayVersion") == RAY_VERSION, f"{where}: rayVersion {spec.get('rayVersion')} != {RAY_VERSION}"
        for group, template in pod_templates(spec):
            for container in template["spec"]["containers"][:1]:  # the Ray container
                version = ray_version_of_image(container["image"])
                assert version == RAY_VERSION, f"{where}: {group} runs {container['image']} (Ray {version})"
    for job in rayjob_specs():
        template = job.spec.get("submitterPodTemplate")
        for container in (template or {}).get("spec", {}).get("containers", []):
            assert ray_version_of_image(container["image"]) == RAY_VERSION, f"{job.where}: submitter {container['image']}"


def test_pods_use_defined_service_accounts() -> None:
    defined = {(d["metadata"].get("namespace"), d["metadata"]["name"])
               for _, d in k8s_documents() if d.get("kind") == "ServiceAccount"}
    for where, doc in k8s_documents():
        kind, ns = doc.get("kind"), doc.get("metadata", {}).get("namespace")
        templates = []
        if kind in RAY_KINDS:
            spec = doc["spec"]["jobTemplate"] if kind == "RayCronJob" else doc["spec"]
            cluster = spec if kind == "RayCluster" else spec.get("rayClusterSpec")
            templates = [t for _, t in pod_templates(cluster)] if cluster else []
        elif kind == "CronJob":
            templates = [doc["spec"]["jobTemplate"]["spec"]["template"]]
        for template in templates:
            account = template["spec"].get("serviceAccountName")
            assert account, f"{where}: a pod template has no serviceAccountName"
            assert (ns, account) in defined, f"{where}: ServiceAccount {ns}/{account} is not defined under cluster/"


def creator_cronjobs() -> list[dict[str, Any]]:
    """The CronJobs that create RayJobs (cronjob-fallback.yaml), not the history pruner."""
    return [d for _, d in k8s_documents() if d.get("kind") == "CronJob" and "kubectl create" in cronjob_script(d)]


def test_cronjob_fallback_can_create_rayjobs() -> None:
    docs = [d for _, d in k8s_documents()]
    cronjobs = creator_cronjobs()
    assert {c["metadata"]["name"] for c in cronjobs} == {"embed-nightly", "train-weekly", "compact-weekly"}
    for cron in cronjobs:
        name, ns = cron["metadata"]["name"], cron["metadata"].get("namespace")
        assert len(cron["spec"]["schedule"].split()) == 5, f"CronJob {name}: schedule"
        assert cron["spec"].get("concurrencyPolicy") == "Forbid", f"CronJob {name}: overlapping runs"
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        # RBAC: the pod's ServiceAccount is bound to a Role that may create ray.io rayjobs.
        account = pod["serviceAccountName"]
        roles = {b["roleRef"]["name"] for b in docs if b.get("kind") == "RoleBinding"
                 and b["metadata"].get("namespace") == ns
                 and any(s["kind"] == "ServiceAccount" and s["name"] == account and s.get("namespace") == ns
                         for s in b["subjects"])}
        allowed = any("ray.io" in rule.get("apiGroups", []) and "rayjobs" in rule.get("resources", [])
                      and "create" in rule.get("verbs", [])
                      for r in docs if r.get("kind") == "Role" and r["metadata"]["name"] in roles
                      and r["metadata"].get("namespace") == ns for rule in r["rules"])
        assert allowed, f"CronJob {name}: ServiceAccount {account} may not create rayjobs"
        script_text = cronjob_script(cron)
        if re.search(r"kubectl get rayjob\s+-l", script_text):  # listing RayJobs needs the list verb
            assert any("list" in rule.get("verbs", []) and "rayjobs" in rule.get("resources", [])
                       for r in docs if r.get("kind") == "Role" and r["metadata"]["name"] in roles
                       for rule in r["rules"]), f"CronJob {name}: lists rayjobs without the list verb"
        # The template the script reads is a key of the ConfigMap mounted there.
        script = " ".join(pod["containers"][0].get("command", []) + pod["containers"][0].get("args", []))
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0].get("volumeMounts", [])}
        for volume in pod.get("volumes", []):
            if "configMap" not in volume:
                continue
            cm = next(d for d in docs
                      if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"])
            used = re.findall(re.escape(mounts[volume["name"]].rstrip("/")) + r"/([\w.-]+)", script)
            assert used and set(used) <= set(cm["data"]), f"CronJob {name}: reads {used}, ConfigMap has {list(cm['data'])}"
            assert "kubectl create" in script or "kubectl apply" in script, f"CronJob {name}: creates nothing"


def test_namespaces_are_consistent() -> None:
    namespaces = {d["metadata"].get("namespace") for _, d in k8s_documents()
                  if d.get("kind") not in ("Namespace",)}
    assert len(namespaces) == 1 and None not in namespaces, f"namespaces: {namespaces}"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_config_file_loads(path: Path) -> None:
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    assert data, f"{path} is empty"
    cfg = embedlib_config.load(str(path))  # raises ConfigError on an unknown section or key
    assert embedlib_config.from_dict(data) == cfg
    if cfg.train.use_gpu and cfg.train.num_workers > 1 and cfg.model.norm == "batch-cumulative":
        pytest.fail(f"{path}: batch-cumulative BatchNorm is not synchronized across GPU workers")


def test_there_are_gpu_and_cpu_configs() -> None:
    configs = [embedlib_config.load(str(p)) for p in CONFIGS.glob("*.toml")]
    assert any(c.train.use_gpu for c in configs) and any(not c.train.use_gpu for c in configs)


def test_dockerfile() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S*)", text, flags=re.M))
    assert args.get("RAY_VERSION") == RAY_VERSION, f"Dockerfile ARG RAY_VERSION={args.get('RAY_VERSION')}"
    assert args.get("TORCH_VERSION") == TORCH_VERSION, f"Dockerfile ARG TORCH_VERSION={args.get('TORCH_VERSION')}"
    assert re.search(r"^FROM \$\{RAY_REPO\}:\$\{RAY_VERSION\}-\$\{RAY_VARIANT\}\s*$", text, flags=re.M)
    base = f"{args['RAY_REPO']}:{args['RAY_VERSION']}-{args['RAY_VARIANT']}"  # the default build: the GPU image
    assert ray_version_of_image(base) == RAY_VERSION and f"-{PYTHON_TAG}-" in base and is_gpu_image(base), base
    assert "download.pytorch.org/whl/" in args.get("TORCH_INDEX_URL", "")
    # The configs land where the entrypoints look for them.
    assert re.search(rf"^COPY\s+cluster/configs/?\s+{re.escape(IMAGE_CONFIG_DIR)}/?\s*$", text, flags=re.M)
    for copied in re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s", text, flags=re.M):
        assert (REPO / copied).exists(), f"Dockerfile copies {copied}, which does not exist"


def test_image_requirements_are_pinned_like_pyproject() -> None:
    lines = [line.split("#")[0].strip() for line in (CLUSTER / "requirements-image.txt").read_text().splitlines()]
    reqs = [line for line in lines if line]
    for req in reqs:
        # plain name==version: the file is also a constraints file, where pip refuses extras
        assert re.fullmatch(r"[\w.-]+==[\w.+-]+", req), f"requirements-image.txt: {req!r} is not a plain exact pin"
    pins = {_requirement_name(r): r.split("==")[1] for r in reqs}
    for dep in PROJECT_DEPS:
        name = _requirement_name(dep)
        assert name in pins, f"pyproject dependency {name} is not pinned for the image"
        if "==" in dep:
            assert pins[name] == _exact_pin(PROJECT_DEPS, name), f"{name}: image {pins[name]} != pyproject {dep}"
    assert "s3fs" in pins and "gcsfs" in pins, "object storage filesystems missing from the image"
    # s3fs and gcsfs each require exactly their own version of fsspec.
    assert pins["s3fs"] == pins["fsspec"] == pins["gcsfs"], {k: pins[k] for k in ("fsspec", "s3fs", "gcsfs")}


def test_launcher_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = CLUSTER / "launcher" / "embedlib-aws.yaml"
    raw = load_documents(path)[0]
    config = prepare_config(copy.deepcopy(raw))  # fills Ray's AWS defaults, as `ray up` does
    validate_config(config)  # Ray's own schema (ray-schema.json) and consistency checks
    assert config["provider"]["type"] == "aws"
    docker = raw["docker"]
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    images += [node_type["docker"]["worker_image"] for node_type in raw["available_node_types"].values()
               if "worker_image" in node_type.get("docker", {})]
    for image in images:
        assert ray_version_of_image(image) == RAY_VERSION and f"-{PYTHON_TAG}" in image, f"launcher image {image}"
    commands = " ".join(str(c) for c in raw["setup_commands"])
    for node_type in raw["available_node_types"].values():
        commands += " " + " ".join(node_type.get("worker_setup_commands", []))
    torch_pins = re.findall(r"torch==(\S+)", commands)
    assert torch_pins and set(torch_pins) == {TORCH_VERSION}, f"launcher installs torch {torch_pins}"
    assert "requirements-image.txt" in commands
    for name, node_type in raw["available_node_types"].items():
        if is_gpu_image(node_type.get("docker", {}).get("worker_image", "")):
            assert node_type.get("min_workers", 0) >= 1, f"{name}: jobs.embed needs a GPU node up when it starts"
            assert "/whl/cu" in " ".join(node_type.get("worker_setup_commands", [])), f"{name}: CPU torch on GPU nodes"


def test_readme_commands() -> None:
    commands = readme_commands()
    modules = {c.module for c in commands}
    assert {"rasterize", "train", "embed", "recalibrate"} <= modules, f"README shows {modules}"
    for command in commands:
        assert (REPO / "jobs" / f"{command.module}.py").is_file(), f"README: jobs/{command.module}.py does not exist"
        parse_with_job_parser(command)
        if command.module != "query":
            effective_config(command)


# -- the lease owner and the scheduled time, through KubeRay's own submitter command ----------------------

OWNER_VAR = "EMBEDLIB_LEASE_OWNER"
OWNER_LABEL = "metadata.labels['batch.kubernetes.io/job-name']"


def kuberay_submit_command(spec: dict[str, Any], job_id: str) -> str:
    """The shell line KubeRay 1.6.2 runs in the submitter pod (K8sJobMode): common/job.go BuildJobSubmitCommand
    joins these words with spaces into `bash -ce -- LINE` (rayjob_controller.go configureSubmitterContainer).
    The entrypoint is pasted in unquoted, so the submitter's bash expands its ${...} and $(...); the runtime
    env is Go's strconv.Quote of its JSON, which json.dumps reproduces for ASCII."""
    address = "http://embedlib-head-svc.embedlib.svc.cluster.local:8265"
    words = ["if", "!", "ray", "job", "status", "--address", address, job_id, ">/dev/null", "2>&1", ";", "then",
             "ray", "job", "submit", "--address", address, "--no-wait"]
    if spec.get("runtimeEnvYAML"):
        words += ["--runtime-env-json", json.dumps(json.dumps(yaml.safe_load(spec["runtimeEnvYAML"]),
                                                              separators=(",", ":")))]
    words += ["--submission-id", job_id, "--", spec["entrypoint"].strip(), ";", "fi", ";",
              "ray", "job", "logs", "--address", address, "--follow", job_id]
    return " ".join(words)


def submit_through_kuberay(tmp_path: Path, spec: dict[str, Any], rayjob_name: str, now: datetime,
                           env_from_pod: dict[str, str] | None = None) -> tuple[dict[str, str], list[str], dict]:
    """Replay the submitter pod: its environment (the downward API's EMBEDLIB_LEASE_OWNER = the RayJob's name,
    KubeRay's own variables), bash, a stand-in `ray` that records what `ray job submit` sends (Ray 2.60's CLI
    joins the entrypoint words with shlex.join on Linux), and a `python` whose embedlib.schedule runs at
    `now`. Returns the variables the entrypoint assigns, the command the head runs, and the runtime env."""
    bin_dir = stub_bin(tmp_path)
    record = tmp_path / f"submitted-{rayjob_name}-{int(now.timestamp())}.json"
    (bin_dir / "ray").write_text(
        f"#!{sys.executable}\n"
        "import json, shlex, sys\n"
        "args = sys.argv[1:]\n"
        "if args[:2] == ['job', 'status']: sys.exit(1)  # not submitted yet\n"
        "if args[:2] == ['job', 'logs']: sys.exit(0)\n"
        "assert args[:2] == ['job', 'submit'], args\n"
        "i = args.index('--')\n"
        "env = json.loads(args[args.index('--runtime-env-json') + 1]) if '--runtime-env-json' in args[:i] else {}\n"
        f"json.dump({{'entrypoint': shlex.join(args[i + 1:]), 'runtime_env': env}}, open({str(record)!r}, 'w'))\n")
    (bin_dir / "python").write_text(
        "#!/bin/sh\n"
        f'if [ "$1 $2" = "-m embedlib.schedule" ]; then shift 2; exec {sys.executable} -m embedlib.schedule '
        f'--now {now.isoformat()} "$@"; fi\n'
        f'exec {sys.executable} "$@"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "RAY_DASHBOARD_ADDRESS": "embedlib-head-svc:8265", "RAY_JOB_SUBMISSION_ID": f"{rayjob_name}-abcde"}
    env.update(env_from_pod if env_from_pod is not None else {OWNER_VAR: rayjob_name})
    line = kuberay_submit_command(spec, f"{rayjob_name}-abcde")
    proc = subprocess.run(["/bin/bash", "-ce", "--", line], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "embedlib.schedule:" not in proc.stderr, proc.stderr
    submitted = json.loads(record.read_text())
    words = shlex.split(submitted["entrypoint"])  # what the head's /bin/sh -c parses
    assigned = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        assigned[key] = value
    return assigned, words, submitted["runtime_env"]


def rendered_rayjob_specs() -> list[tuple[str, dict[str, Any], str]]:
    """(where, RayJob spec, an example of the RayJob's name) for every RayJob the manifests make."""
    out = []
    for where, doc in rendered_ray_objects():
        if doc["kind"] == "RayJob":
            out.append((where, doc["spec"], doc["metadata"]["name"]))
        elif doc["kind"] == "RayCronJob":
            out.append((where, doc["spec"]["jobTemplate"], f"{doc['metadata']['name']}-x7k2p"))  # constructRayJob
    return out


def test_every_rayjob_hands_its_name_to_the_driver_as_lease_owner(tmp_path: Path) -> None:
    """EMBEDLIB_LEASE_OWNER must be the RayJob's name, the same for every attempt (a retry may then take over
    its own dead attempt's lease at once) and different between RayJobs (a RayCronJob's are named
    <name>-<5 random characters>). Nothing in a RayJob's spec knows that name, so the submitter pod reads it
    from its Job's name (KubeRay names the submitter Job after the RayJob, rayjob_controller.go
    createNewK8sJob; Kubernetes labels the Job's pods batch.kubernetes.io/job-name) and the entrypoint passes
    it on to the driver, whose environment is the head's, not the submitter's."""
    specs = rendered_rayjob_specs()
    assert len(specs) >= 8, [w for w, _, _ in specs]
    now = datetime(2026, 11, 24, 9, 30, tzinfo=timezone.utc)
    for where, spec, name in specs:
        assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode", f"{where}: no submitter pod, no owner"
        containers = ((spec.get("submitterPodTemplate") or {}).get("spec") or {}).get("containers") or []
        assert containers, f"{where}: no submitterPodTemplate"
        owner_env = [e for e in containers[0].get("env", []) if e["name"] == OWNER_VAR]
        assert [e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in owner_env] == [OWNER_LABEL], \
            f"{where}: the submitter (container 0, the one KubeRay runs `ray job submit` in) must set {OWNER_VAR}"
        assert "command" not in containers[0], f"{where}: a submitter command replaces KubeRay's `ray job submit`"
        assigned, words, runtime_env = submit_through_kuberay(tmp_path, spec, name, now)
        assert assigned == {OWNER_VAR: name}, f"{where}: the driver gets {assigned}"
        assert OWNER_VAR not in (runtime_env.get("env_vars") or {}), f"{where}: {OWNER_VAR} belongs in the entrypoint"
        command = job_commands(shlex.join(words))
        assert command and words[:3] == ["python", "-m", f"jobs.{command[0].module}"], f"{where}: {words[:4]}"
        parse_with_job_parser(command[0])
    # Without the submitter's variable (another submission mode, a hand-made pod) the owner is empty, never
    # a literal "${EMBEDLIB_LEASE_OWNER}": the library must treat an empty owner as none.
    where, spec, name = specs[0]
    assigned, _, _ = submit_through_kuberay(tmp_path, spec, name, now, env_from_pod={})
    assert assigned == {OWNER_VAR: ""}, assigned


def test_scheduled_runs_are_named_from_the_scheduled_time() -> None:
    """No scheduled entrypoint reads the clock (`$(date ...)` is the submission time); every
    `python -m embedlib.schedule 'EXPR'` in a RayCronJob's entrypoint is that RayCronJob's own schedule, and
    KubeRay's parser accepts the schedule (embedlib.schedule follows robfig/cron)."""
    seen = 0
    for where, doc in k8s_documents():
        if doc.get("kind") != "RayCronJob":
            continue
        schedule = doc["spec"]["schedule"]
        last_fire_time(schedule, SCHEDULE_EPOCH)  # parses, and it fires
        entrypoint = doc["spec"]["jobTemplate"]["entrypoint"]
        assert "$(date" not in entrypoint and "`date" not in entrypoint, f"{where}: named from the submission time"
        for expr in re.findall(r"\$\(python -m embedlib\.schedule '([^']*)'", entrypoint):
            assert expr == schedule, f"{where}: names its run after {expr!r}, but runs on {schedule!r}"
            seen += 1
    for job in rayjob_specs():
        if job.scheduled:
            assert "$(date" not in job.spec["entrypoint"], f"{job.where}: named from the submission time"
    assert seen >= 3, "the weekly retrain names --workdir, --output and --name from its schedule"


@pytest.mark.parametrize("later,week", [
    (timedelta(minutes=12), "2026-w47"),                 # the first attempt, once its cluster is up
    (timedelta(hours=21, minutes=30), "2026-w47"),       # a retry after Monday 00:00 UTC: the bug of issue 17
    (timedelta(days=6, hours=23, minutes=59), "2026-w47"),
    (timedelta(days=7, minutes=12), "2026-w48"),         # next week's run
])
def test_weekly_retrain_retry_resumes_the_same_week(tmp_path: Path, later: timedelta, week: str) -> None:
    doc = next(d for _, d in k8s_documents() if d.get("kind") == "RayCronJob" and d["metadata"]["name"] == "train-weekly")
    fired = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)  # a Sunday 03:00 UTC
    assert fired in fire_times(doc["spec"]["schedule"], days=365)
    _, words, _ = submit_through_kuberay(tmp_path, doc["spec"]["jobTemplate"], "train-weekly-x7k2p", fired + later)
    command = job_commands(shlex.join(words))[0]
    assert command.values("--name") == [f"weekly-{week}"], command.argv
    assert command.values("--workdir") == [f"s3://YOUR_BUCKET/embedlib/train/week={week}"], command.argv
    assert command.values("--output") == [f"s3://YOUR_BUCKET/embedlib/models/candidates/week={week}"], command.argv


def test_compaction_ends_before_the_next_nightly_run() -> None:
    """jobs.compact takes the root's lease: a compaction still running at 02:00 would make that night's run
    exit 75. Its whole life (worst_case_seconds) from any fire time must end before the next nightly fire."""
    pairs = 0
    for nightly in rayjob_specs():
        commands = job_commands(nightly.spec["entrypoint"])
        if not (nightly.scheduled and commands[0].module == "embed"):
            continue
        for compact in rayjob_specs():
            if not (compact.scheduled and job_commands(compact.spec["entrypoint"])[0].module == "compact"):
                continue
            if ("data[" in nightly.where) != ("data[" in compact.where):
                continue  # RayCronJobs with RayCronJobs, the fallback with the fallback
            pairs += 1
            for start in fire_times(compact.schedule, days=28):
                end = start + timedelta(seconds=worst_case_seconds(compact.spec))
                assert end < next_fire_time(nightly.schedule, start), \
                    f"{compact.where}: a compaction from {start} may run until {end}, past the next nightly run"
    assert pairs == 2, pairs


CREDENTIAL_NAMES = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIALS|ENDPOINT)", re.I)
OBJECT_STORE_SECRET = "embedlib-object-store"


def test_object_store_credentials_come_from_a_secret() -> None:
    """runtimeEnvYAML is stored in the RayJob object (readable by anyone who may get RayJobs) and sent to the
    dashboard: keys and endpoints of an S3-compatible store come from a Secret, through envFrom on every Ray
    pod, whose environment every Ray worker process and the driver inherit."""
    for job in rayjob_specs():
        env = (yaml.safe_load(job.spec.get("runtimeEnvYAML") or "{}") or {}).get("env_vars") or {}
        leaked = [k for k in env if CREDENTIAL_NAMES.search(k)]
        assert not leaked, f"{job.where}: {leaked} in runtimeEnvYAML; put them in the Secret {OBJECT_STORE_SECRET}"
        assert "env_vars" not in (job.spec.get("submitterPodTemplate") or {}), job.where
    pods = 0
    for where, spec in ray_cluster_specs():
        for group, template in pod_templates(spec):
            container = template["spec"]["containers"][0]
            for var in container.get("env", []):
                assert not CREDENTIAL_NAMES.search(var["name"]) or "valueFrom" in var, \
                    f"{where}: {group} sets {var['name']} in the manifest"
            refs = [e["secretRef"] for e in container.get("envFrom", []) if "secretRef" in e]
            assert {"name": OBJECT_STORE_SECRET, "optional": True} in refs, \
                f"{where}: {group} does not take {OBJECT_STORE_SECRET} (optional: IRSA/Workload Identity need none)"
            pods += 1
    assert pods >= 20, pods
    # no Secret with keys in the repository
    assert not [d for _, d in k8s_documents() if d.get("kind") == "Secret"]


def test_kuberay_helm_values_turn_on_raycronjob() -> None:
    """The chart's values.yaml (kuberay-operator 1.6.2) lists these five gates, RayCronJob false; a list value
    replaces the chart's as a whole, so the file must repeat every gate."""
    values = load_documents(CLUSTER / "helm" / "kuberay-operator-values.yaml")[0]
    gates = {g["name"]: g["enabled"] for g in values["featureGates"]}
    assert gates == {"RayClusterStatusConditions": True, "RayJobDeletionPolicy": True, "RayMultiHostIndexing": True,
                     "RayServiceIncrementalUpgrade": False, "RayCronJob": True}, gates
