"""cluster/: the manifests parse, pass a schema check for the KubeRay / Ray fields they use, and everything they name
(job configs, CLI subcommands, import paths, files copied into the image) exists in this repository. No network,
no Kubernetes: the KubeRay field schema is tests/cluster/kuberay_schema.py, the launcher schema is Ray's own
ray/autoscaler/ray-schema.json, the Serve config schema is ray.serve.schema.ServeDeploySchema."""
from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from kuberay_schema import SCHEMAS
from toolace_r.cli import COMMANDS
from toolace_r.config import ServeConfig, load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_docs() -> list[tuple[str, dict]]:
    return [(f"{p.name}#{i}", d) for p in MANIFESTS for i, d in enumerate(load_docs(p))]


def by_kind(kind: str) -> list[dict]:
    return [d for _, d in all_docs() if d.get("kind") == kind]


def schema_errors(doc: dict) -> list[str]:
    schema = SCHEMAS.get(doc.get("kind"))
    if schema is None:
        return [f"kind {doc.get('kind')!r} has no schema here (known: {sorted(SCHEMAS)})"]
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayClusterSpec in the manifests: RayCluster.spec, RayJob.spec.rayClusterSpec,
    RayService.spec.rayClusterConfig."""
    out = [(f"RayCluster {d['metadata']['name']}", d["spec"]) for d in by_kind("RayCluster")]
    out += [(f"RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"]) for d in by_kind("RayJob")]
    out += [(f"RayService {d['metadata']['name']}", d["spec"]["rayClusterConfig"]) for d in by_kind("RayService")]
    return out


def pod_specs(spec: dict) -> list[tuple[str, dict]]:
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    return pods + [(g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]


def gpus_per_pod(pod: dict) -> int:
    limits = pod["containers"][0].get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def dockerfile() -> tuple[str, str, list[str]]:
    """(Ray version of the base image, WORKDIR, COPY sources) of cluster/Dockerfile."""
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\d+\.\d+\.\d+)", text, re.M)
    workdir = re.search(r"^WORKDIR (\S+)", text, re.M)
    assert base and workdir, "cluster/Dockerfile must set ARG RAY_IMAGE=rayproject/ray:X.Y.Z and a WORKDIR"
    sources = []
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        parts = [p for p in line.split() if not p.startswith("--")]
        sources += parts[:-1]
    return base.group(1), workdir.group(1), sources


# ------------------------------------------------------------------------------------------------ KubeRay schema
def test_manifests_exist_and_cover_the_three_kuberay_resources():
    kinds = {d.get("kind") for _, d in all_docs()}
    assert {"RayCluster", "RayJob", "RayService", "PersistentVolumeClaim"} <= kinds, kinds


@pytest.mark.parametrize("name,doc", all_docs(), ids=[n for n, _ in all_docs()])
def test_manifest_matches_the_kuberay_field_schema(name, doc):
    errors = schema_errors(doc)
    assert not errors, f"{name}:\n  " + "\n  ".join(errors)


def test_schema_check_catches_misspelt_and_mistyped_fields():
    """The check above must be able to fail: typical mistakes in a RayJob are each reported at their path."""
    job = copy.deepcopy(by_kind("RayJob")[0])
    spec = job["spec"]
    spec["shutdownAfterJobFinish"] = True  # missing 's'
    spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # int, must be a string
    spec["rayClusterSpec"]["workerGroupSpecs"][0]["minReplica"] = 1  # missing 's'
    spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "lots"
    spec["submissionMode"] = "K8sJob"
    errors = "\n".join(schema_errors(job))
    assert "'shutdownAfterJobFinish' was unexpected" in errors
    assert "spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'" in errors
    assert "'minReplica' was unexpected" in errors
    assert "resources.limits.memory" in errors
    assert "spec.submissionMode: 'K8sJob' is not one of" in errors


@pytest.mark.parametrize("where,spec", cluster_specs(), ids=[w for w, _ in cluster_specs()])
def test_cluster_spec_is_consistent(where, spec):
    """What KubeRay's schema cannot see: replica bounds, volumes that exist, one image and Ray version everywhere,
    an autoscaling GPU group, and the shared volume on every pod."""
    ray_version, _, _ = dockerfile()
    assert spec["rayVersion"] == ray_version, f"{where}: rayVersion {spec['rayVersion']} != Dockerfile's {ray_version}"
    assert spec.get("enableInTreeAutoscaling") is True, f"{where}: the Ray autoscaler must be on"
    groups = spec.get("workerGroupSpecs", [])
    assert len({g["groupName"] for g in groups}) == len(groups), f"{where}: duplicate worker groupName"
    assert any(g["maxReplicas"] > g["minReplicas"] and gpus_per_pod(g["template"]["spec"]) > 0 for g in groups), \
        f"{where}: needs a GPU worker group that can scale (maxReplicas > minReplicas)"
    for g in groups:
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"] or g.get("replicas", 0) == 0, \
            f"{where}/{g['groupName']}: replicas outside [minReplicas, maxReplicas]"
        assert g["minReplicas"] <= g["maxReplicas"], f"{where}/{g['groupName']}: minReplicas > maxReplicas"
    claims = {d["metadata"]["name"] for d in by_kind("PersistentVolumeClaim")}
    images = set()
    for group, pod in pod_specs(spec):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            images.add(c["image"])
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{where}/{group}: volumeMount {m['name']!r} has no volume"
            assert any(m["mountPath"] == "/mnt/shared" for m in c.get("volumeMounts", [])), \
                f"{where}/{group}: every Ray pod must mount the shared volume at /mnt/shared"
            res = c.get("resources", {})
            assert res.get("requests", {}).get("nvidia.com/gpu") == res.get("limits", {}).get("nvidia.com/gpu"), \
                f"{where}/{group}: GPU requests and limits must be equal"
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, \
                    f"{where}/{group}: PVC {v['persistentVolumeClaim']['claimName']!r} is not defined in cluster/kuberay"
    assert len(images) == 1, f"{where}: all Ray pods must run the same image, got {images}"
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", f"{where}: keep work off the head"


# ------------------------------------------------------------------------------------------------ what manifests name
def entrypoint_argv(cmd: str) -> tuple[str, list[str], str | None, list[str]]:
    """`toolace-r SUB --config FILE k=v ...` → (program, [SUB], FILE, overrides)."""
    argv = shlex.split(cmd)
    program, sub, rest = argv[0], argv[1], argv[2:]
    config = None
    if "--config" in rest:
        i = rest.index("--config")
        config = rest[i + 1]
        rest = rest[:i] + rest[i + 2:]
    return program, [sub], config, [a for a in rest if "=" in a]


def test_rayjob_runs_a_real_subcommand_with_a_loadable_job_config():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    _, workdir, _ = dockerfile()
    for job in by_kind("RayJob"):
        spec = job["spec"]
        program, (sub,), config, overrides = entrypoint_argv(spec["entrypoint"])
        assert program in scripts, f"{program!r} is not a console script of this package ({sorted(scripts)})"
        assert sub in COMMANDS, f"entrypoint subcommand {sub!r} is not in toolace_r.cli.COMMANDS"
        module, func, _ = COMMANDS[sub]
        assert callable(getattr(importlib.import_module(module), func)), f"{module}.{func} missing"
        assert config and (REPO / config).is_file(), f"job config {config!r} does not exist in the repo"
        cfg = load_config(REPO / config, overrides)  # raises ConfigError for a bad key or value
        assert cfg.run.dir.startswith("/mnt/shared/"), "the run dir must be on the shared volume to survive the cluster"
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert set(runtime_env) <= {"working_dir", "env_vars", "pip", "py_modules", "excludes", "config"}
        assert runtime_env["working_dir"] == workdir, "working_dir must be the repo copy inside the image"
        assert all(isinstance(v, str) for v in runtime_env.get("env_vars", {}).values()), "env_vars must be strings"
        # The GPU training workers the config asks for fit in what the autoscaler may start.
        cluster = spec["rayClusterSpec"]
        capacity = sum(g["maxReplicas"] * gpus_per_pod(g["template"]["spec"]) for g in cluster["workerGroupSpecs"])
        if cfg.train.use_gpu:
            assert cfg.train.num_workers <= capacity, f"train.num_workers={cfg.train.num_workers} > {capacity} GPUs"
            # ... and a full GPU pod has the CPUs its training workers / probe actors reserve (else they never start).
            for g in cluster["workerGroupSpecs"]:
                pod = g["template"]["spec"]
                n_gpu = gpus_per_pod(pod)
                cpus = float(pod["containers"][0]["resources"]["limits"]["cpu"])
                if n_gpu:
                    assert n_gpu * cfg.train.cpus_per_worker <= cpus, f"{g['groupName']}: too few CPUs for training"
                    if cfg.probe.gpus_per_actor:
                        actors = n_gpu // cfg.probe.gpus_per_actor
                        assert actors * cfg.probe.cpus_per_actor <= cpus, f"{g['groupName']}: too few CPUs for probing"


def serve_apps(serve_config: dict) -> dict[str, dict]:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config)  # Ray Serve's own schema for serveConfigV2 / `serve run` files
    return {app["name"]: app for app in serve_config["applications"]}


def serve_overrides(args: dict) -> list[str]:
    """The serve.* overrides toolace_r.serve.build_app makes of a Serve application's `args`."""
    return [f"serve.{k}={json.dumps(v) if not isinstance(v, str) else v}"
            for k, v in args.items() if k not in ("config", "overrides")] + list(args.get("overrides", []))


def test_rayservice_serves_the_application_of_jobs_serve_yaml():
    local_file = REPO / "jobs" / "serve.yaml"
    assert local_file.is_file(), "jobs/serve.yaml (the local Serve config the RayService mirrors) is missing"
    local = serve_apps(yaml.safe_load(local_file.read_text()))
    for service in by_kind("RayService"):
        spec = service["spec"]
        apps = serve_apps(yaml.safe_load(spec["serveConfigV2"]))
        assert set(apps) == set(local), f"applications {sorted(apps)} != jobs/serve.yaml's {sorted(local)}"
        for name, app in apps.items():
            ref = local[name]
            assert app["import_path"] == ref["import_path"] and app.get("route_prefix") == ref.get("route_prefix")
            module, _, attr = app["import_path"].partition(":")
            assert callable(getattr(importlib.import_module(module), attr)), f"{app['import_path']} is not callable"
            args = app.get("args", {})
            missing = set(ref.get("args", {})) - set(args)
            assert not missing, f"{name}: args of jobs/serve.yaml not set in the RayService: {sorted(missing)}"
            unknown = set(args) - set(ServeConfig.__dataclass_fields__) - {"config", "overrides"}
            assert not unknown, f"{name}: args {sorted(unknown)} are not serve.* keys"
            cfg = load_config(REPO / args["config"] if "config" in args else None, serve_overrides(args))
            assert cfg.serve.model.startswith("/mnt/shared/"), "the served model must be on the shared volume"
            assert cfg.serve.max_replicas > cfg.serve.min_replicas >= 1, "Serve autoscaling needs room to scale"
            # The Ray autoscaler can place every replica Serve may ask for.
            cluster = spec["rayClusterConfig"]
            slots = sum(g["maxReplicas"] * int(gpus_per_pod(g["template"]["spec"]) // max(cfg.serve.num_gpus, 1e-9))
                        for g in cluster["workerGroupSpecs"]) if cfg.serve.num_gpus else None
            if slots is not None:
                assert cfg.serve.max_replicas <= slots, f"serve.max_replicas={cfg.serve.max_replicas} > {slots} slots"


# ------------------------------------------------------------------------------------------------ launcher, image
def launcher_config() -> dict:
    return yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())


def validate_launcher(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_launcher_yaml_passes_rays_cluster_schema():
    validate_launcher(launcher_config())
    broken = launcher_config()
    broken["available_node_types"]["gpu_8x_a100"]["min_worker"] = 1  # typo
    with pytest.raises(jsonschema.ValidationError, match="'min_worker' was unexpected"):
        validate_launcher(broken)


def test_launcher_installs_this_package_from_the_repo_on_every_node():
    config = launcher_config()
    ray_version, _, _ = dockerfile()
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray_version}-"), "same Ray as cluster/Dockerfile"
    mounts = config["file_mounts"]
    repo_mounts = [remote for remote, local in mounts.items() if not local.startswith("~")]
    for remote in repo_mounts:
        assert (REPO / mounts[remote]).resolve().exists(), f"file_mounts source {mounts[remote]!r} not in the repo"
    assert any(mounts[r] == "." for r in repo_mounts), "the repository itself must be mounted on every node"
    repo_remote = next(r for r in repo_mounts if mounts[r] == ".")
    assert any(re.search(rf"pip install .*-e {re.escape(repo_remote)}\b", c) for c in config["setup_commands"])
    assert ".venv" in config["rsync_exclude"], "never ship the local virtualenv to the cluster"
    gpu_types = [t for t, n in config["available_node_types"].items() if t != config["head_node_type"]]
    assert any(config["available_node_types"][t]["max_workers"] > config["available_node_types"][t]["min_workers"]
               for t in gpu_types), "a worker type must be able to autoscale"
    assert any("--autoscaling-config" in c for c in config["head_start_ray_commands"])


def test_dockerfile_copies_files_that_exist():
    _, workdir, sources = dockerfile()
    assert workdir.startswith("/home/ray/")
    assert sources, "the Dockerfile copies nothing"
    for src in sources:
        assert (REPO / src).exists(), f"cluster/Dockerfile copies {src!r}, which is not in the repo"


def test_operator_guide_names_real_commands_configs_and_files():
    text = (CLUSTER / "README.md").read_text()
    code = "\n".join(re.findall(r"```.*?```", text, re.S) + re.findall(r"`[^`\n]+`", text))  # commands are code
    subcommands = set(re.findall(r"\btoolace-r ([a-z][a-z-]+)", code))
    assert {"run", "serve"} <= subcommands
    assert subcommands <= set(COMMANDS), f"README names unknown subcommands {sorted(subcommands - set(COMMANDS))}"
    paths = set(re.findall(r"\b((?:jobs|cluster|toolace_r|benchmarks|tests)/[\w./-]*\w)", text))
    assert "jobs/llama31_8b.yaml" in paths and "cluster/kuberay/rayjob.yaml" in paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"cluster/README.md names paths that do not exist: {missing}"
    assert "ray job submit --address" in text and "--working-dir . -- toolace-r run --config jobs/llama31_8b.yaml" in text
