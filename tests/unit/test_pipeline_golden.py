"""Compiled pipelines against the checked-in golden YAML (tests/golden/), and where cluster placement
(kfp-kubernetes platform config) appears: on the paper profile where intended, never on the tiny one.

A deliberate pipeline or params change updates the goldens with one command:

    VIDPRIOR_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_pipeline_golden.py

(`make golden` runs the same), then review `git diff tests/golden`.
"""

# No `from __future__ import annotations`: kfp reads the stub component's annotations as types.

import difflib
import functools
import os
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl

from pipelines.compile import PIPELINES, compile_all
from pipelines.tracked import ENDPOINT_CLIENTS, SHM_PATH, Placement
from vidprior.config import ParamsError, flatten, load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
UPDATE_ENV = "VIDPRIOR_UPDATE_GOLDEN"
REGENERATE = f"{UPDATE_ENV}=1 .venv/bin/pytest tests/unit/test_pipeline_golden.py  (or: make golden)"
# Golden file suffix -> params files (relative to the repository root).
PROFILES = {"": ("params.yaml",), ".paper": ("params.yaml", "params/paper.yaml")}
GOLDEN_FILES = [f"{name}{suffix}.yaml" for suffix in PROFILES for name in PIPELINES]


def profile_params(suffix: str):
    return load_params([ROOT / f for f in PROFILES[suffix]])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, str]:
    """Every pipeline compiled once per profile: golden file name -> YAML text."""
    texts = {}
    for suffix in PROFILES:
        out = tmp_path_factory.mktemp(f"compiled{suffix or '.tiny'}")
        for path in compile_all(profile_params(suffix), out):
            texts[f"{path.stem}{suffix}.yaml"] = path.read_text()
    if os.environ.get(UPDATE_ENV):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (GOLDEN / name).write_text(text)
    return texts


@functools.cache
def documents(text: str) -> list[dict]:
    """The YAML documents of a compiled file (parsed once per text; callers do not mutate them)."""
    return list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def platform(text: str) -> dict[str, dict]:
    """Executor label -> its kubernetes platform config (empty when the file has none)."""
    docs = documents(text)
    if len(docs) < 2:
        return {}
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def executors(text: str) -> dict[str, dict]:
    return documents(text)[0]["deploymentSpec"]["executors"]


def component_of(executor: str) -> str:
    """`exec-merge-shards-2` -> `merge-shards` (kfp numbers repeated components)."""
    name = executor.removeprefix("exec-")
    base, _, number = name.rpartition("-")
    return base if number.isdigit() and base else name


def gpu_executors(text: str) -> set[str]:
    return {
        name
        for name, spec in executors(text).items()
        if spec.get("container", {}).get("resources", {}).get("accelerator")
    }


# --------------------------------------------------------------------------- goldens


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_compiled_pipeline_matches_golden(compiled, name):
    golden = GOLDEN / name
    assert golden.is_file(), f"missing golden {golden.relative_to(ROOT)}; create it with: {REGENERATE}"
    expected, actual = golden.read_text(), compiled[name]
    if actual != expected:
        diff = difflib.unified_diff(
            expected.splitlines(),
            actual.splitlines(),
            f"tests/golden/{name} (golden)",
            f"{name} (compiled now)",
            lineterm="",
            n=2,
        )
        # The params default is one long line: cut diff lines, and name the params keys that changed.
        lines = [line if len(line) <= 200 else line[:200] + " ..." for line in diff]
        shown = "\n".join(lines[:120]) + (
            f"\n... {len(lines) - 120} more diff lines" if len(lines) > 120 else ""
        )
        pytest.fail(
            f"compiled {name} differs from its golden:\n{shown}\n{_params_change(expected, actual)}"
            f"\nIf intended, regenerate: {REGENERATE}"
        )


def _params_change(expected: str, actual: str) -> str:
    def default(text: str) -> dict:
        try:
            value = documents(text)[0]["root"]["inputDefinitions"]["parameters"]["params_yaml"][
                "defaultValue"
            ]
            return flatten(yaml.safe_load(value))
        except (KeyError, TypeError, yaml.YAMLError):
            return {}

    before, after = default(expected), default(actual)
    changed = sorted(
        k for k in before.keys() | after.keys() if before.get(k, "<absent>") != after.get(k, "<absent>")
    )
    if not changed:
        return ""
    rows = [f"  {k}: {before.get(k, '<absent>')!r} -> {after.get(k, '<absent>')!r}" for k in changed[:40]]
    more = f"\n  ... {len(changed) - 40} more" if len(changed) > 40 else ""
    return "params default (params_yaml) changed:\n" + "\n".join(rows) + more + "\n"


def test_goldens_are_deterministic_and_portable(compiled, tmp_path):
    again = compile_all(profile_params(""), tmp_path)
    assert {p.name: p.read_text() for p in again} == {n: compiled[n] for n in (p.name for p in again)}
    for name, text in compiled.items():
        for local in (str(ROOT), str(Path.home()), "/tmp/"):
            assert local not in text, f"{name} embeds the local path {local}"


# --------------------------------------------------------------------------- placement, paper profile


def test_tiny_profile_compiles_without_any_cluster_specifics(compiled):
    for name in (f"{n}.yaml" for n in PIPELINES):
        text = compiled[name]
        # One document: no `platforms:` spec (secrets, node selectors, tolerations, volumes), which kfp
        # writes as a second document. (The params default names those settings; it sets none.)
        assert len(documents(text)) == 1, f"{name} has a platform spec"
        assert platform(text) == {}
        assert gpu_executors(text) == set()
        for executor in executors(text).values():
            assert "env" not in executor.get("container", {})  # no HF_HOME


# Training steps -> the params section of their launcher (`pipelines.tracked.Placement.train`).
JOB_LAUNCHERS = {"train-classifier": "unic.train.launcher", "train-udpdiff": "udpdiff.train.launcher"}


def launcher_of(params, executor_name: str):
    return params.section(JOB_LAUNCHERS[component_of(executor_name)])


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_paper_profile_places_every_task(compiled, pipeline):
    params = profile_params(".paper")
    kube = params.kubernetes
    text = compiled[f"{pipeline}.paper.yaml"]
    execs, config = executors(text), platform(text)
    containers = {name for name, spec in execs.items() if "container" in spec}  # not the importer
    assert set(config) == containers  # every task has cluster config (at least the MLflow secret)
    gpus = gpu_executors(text)
    assert gpus, "the paper profile puts model tasks on GPUs"
    secret = kube.mlflow_secret
    for name, conf in config.items():
        mlflow = [s for s in conf["secretAsEnv"] if s["secretName"] == secret.name]
        assert len(mlflow) == 1, name
        assert {e["secretKey"]: e["envVar"] for e in mlflow[0]["keyToEnv"]} == secret.env
        assert set(secret.env.values()) >= {
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        }
        env = {e["name"]: e["value"] for e in execs[name]["container"].get("env", [])}
        assert env.get("HF_HOME") == kube.hf_home
        mounts = {m["mountPath"]: m["constant"] for m in conf.get("pvcMount", [])}
        tracking = component_of(name) in ("open-mlflow-run", "close-mlflow-run")
        # Stage tasks read data from the datasets volume; the MLflow bookkeeping tasks do not.
        assert (mounts.get(kube.datasets_pvc.mount_path) == kube.datasets_pvc.name) != tracking, name
        on_gpu = name in gpus
        resources = execs[name]["container"].get("resources", {})
        if on_gpu:
            assert resources["accelerator"]["resourceCount"] == "1"
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert conf["nodeAffinity"] == [
                {
                    "matchExpressions": [
                        {"key": "nvidia.com/gpu.product", "operator": "In", "values": kube.gpu_products}
                    ]
                }
            ]
            assert set(kube.gpu_products) == {"NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"}
            assert conf["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
            assert conf["emptyDirMounts"] == [
                {"volumeName": "dshm", "mountPath": SHM_PATH, "medium": "Memory", "sizeLimit": kube.shm_size}
            ]
            assert mounts[kube.checkpoints_pvc.mount_path] == kube.checkpoints_pvc.name
        else:
            for key in ("nodeAffinity", "nodeSelector", "tolerations", "emptyDirMounts"):
                assert key not in conf, f"{name} (no GPU) has {key}"
            # A train step that launches a training job holds no GPU; it hands the job its inputs and
            # outputs on the checkpoints volume. No other CPU task mounts it.
            launches_job = (
                component_of(name) in JOB_LAUNCHERS and launcher_of(params, name).kind != "in_process"
            )
            assert (kube.checkpoints_pvc.mount_path in mounts) == launches_job, name
        endpoint = [s for s in conf["secretAsEnv"] if s["secretName"] == kube.endpoint_secret.name]
        if component_of(name) in ENDPOINT_CLIENTS:
            section = params.section(ENDPOINT_CLIENTS[component_of(name)])
            assert endpoint == [
                {
                    "keyToEnv": [{"secretKey": kube.endpoint_secret.key, "envVar": section.api_key_env}],
                    "optional": True,
                    "secretName": kube.endpoint_secret.name,
                    "secretNameParameter": {"runtimeValue": {"constant": kube.endpoint_secret.name}},
                }
            ]
        else:
            assert endpoint == [], f"{name} gets the endpoint key but calls no endpoint"


def test_paper_endpoint_clients_are_the_judge_prompt_filter_and_captioner(compiled):
    with_key = {
        component_of(name)
        for pipeline in PIPELINES
        for name, conf in platform(compiled[f"{pipeline}.paper.yaml"]).items()
        if any(s["secretName"] == "vidprior-llm-endpoint" for s in conf["secretAsEnv"])
    }
    assert with_key == set(ENDPOINT_CLIENTS) == {"collect-prompts", "judge-videos", "caption-clips"}
    judge = platform(compiled["unic.paper.yaml"])["exec-judge-videos"]
    assert "nodeAffinity" not in judge  # the judge calls a remote endpoint: no GPU node for it


def test_every_task_runs_one_of_the_params_images(compiled):
    for suffix in PROFILES:
        images = profile_params(suffix).images
        allowed = {images.base, images.train, images.label}
        for pipeline in PIPELINES:
            for name, spec in executors(compiled[f"{pipeline}{suffix}.yaml"]).items():
                if "container" in spec:
                    assert spec["container"]["image"] in allowed, f"{pipeline}{suffix}: {name}"


# --------------------------------------------------------------------------- placement variants


@dsl.component(base_image="unused", install_kfp_package=False)
def step(text: str) -> str:
    """A stand-in stage task.

    Args:
        text: Anything.

    Returns:
        `text`.
    """
    return text


def _stub_pipeline(params):
    """A two-task pipeline placed like the real ones (a GPU task and a CPU task)."""
    from pipelines.tracked import closing_parent_run

    place = Placement(params)

    @dsl.pipeline(name="placement-stub")
    def stub(parent_run_id: str = "run"):
        with closing_parent_run(place, parent_run_id, "", name="stub"):
            first = place.gpu(step(text="a"))
            place.base(step(text=first.output))

    return stub


def _compile(pipeline, tmp_path) -> str:
    path = tmp_path / "stub.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    return path.read_text()


def _params(**kubernetes):
    data = load_params([ROOT / "params.yaml", ROOT / "params" / "paper.yaml"]).model_dump(mode="json")
    data["kubernetes"].update(kubernetes)
    return params_from_dict(data)


def test_one_gpu_product_compiles_to_a_node_selector(tmp_path):
    text = _compile(_stub_pipeline(_params(gpu_products=["NVIDIA-H100-80GB-HBM3"])), tmp_path)
    gpu = platform(text)["exec-step"]
    assert gpu["nodeSelector"] == {"labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}
    assert "nodeAffinity" not in gpu


def test_enabled_overrides_the_profile(tmp_path):
    assert platform(_compile(_stub_pipeline(_params(enabled=False)), tmp_path)) == {}
    tiny = load_params([ROOT / "params.yaml"]).model_dump(mode="json")
    tiny["kubernetes"] = {"enabled": True}
    text = _compile(_stub_pipeline(params_from_dict(tiny)), tmp_path)
    assert {"exec-step", "exec-step-2", "exec-close-mlflow-run"} == set(platform(text))
    # Placement on, but the tiny profile asks for no GPU, so no GPU node either; shm and volumes stay.
    assert gpu_executors(text) == set()
    gpu_task = platform(text)["exec-step"]
    assert not {"tolerations", "nodeAffinity", "nodeSelector"} & set(gpu_task)
    assert gpu_task["emptyDirMounts"][0]["mountPath"] == SHM_PATH
    assert [m["mountPath"] for m in gpu_task["pvcMount"]] == ["/mnt/datasets", "/mnt/checkpoints"]


def test_kubernetes_params_follow_the_profile_unless_set():
    from vidprior.config import KubernetesParams, TolerationParams

    assert KubernetesParams().applies("paper") and not KubernetesParams().applies("tiny")
    assert KubernetesParams(enabled=True).applies("tiny") and not KubernetesParams(enabled=False).applies(
        "paper"
    )
    with pytest.raises(ValueError, match="'value' must be null with operator 'Exists'"):
        TolerationParams(operator="Exists", value="x")
    assert TolerationParams(operator="Equal", value="a100").value == "a100"


def test_created_checkpoints_volume_is_made_first_and_mounted_by_name(tmp_path):
    created = {
        "name": "ckpt",
        "mount_path": "/mnt/ckpt",
        "create": True,
        "size": "200Gi",
        "storage_class": "rwx",
    }
    text = _compile(_stub_pipeline(_params(checkpoints_pvc=created)), tmp_path)
    spec = documents(text)[0]
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    create = tasks["createpvc"]
    assert create["taskInfo"]["name"] == "create-checkpoints-pvc"
    assert {k: v["runtimeValue"]["constant"] for k, v in create["inputs"]["parameters"].items()} == {
        "access_modes": ["ReadWriteMany"],
        "pvc_name_suffix": "-ckpt",
        "size": "200Gi",
        "storage_class_name": "rwx",
    }
    assert "createpvc" in tasks["step"]["dependentTasks"]
    (mount,) = [m for m in platform(text)["exec-step"]["pvcMount"] if m["mountPath"] == "/mnt/ckpt"]
    assert mount["taskOutputParameter"] == {"producerTask": "createpvc", "outputParameterKey": "name"}
    # The created volume is for GPU tasks only; the CPU task mounts just the datasets volume.
    cpu_mounts = [m["mountPath"] for m in platform(text)["exec-step-2"]["pvcMount"]]
    assert cpu_mounts == ["/mnt/datasets"]


def test_a_created_volume_needs_a_storage_class():
    with pytest.raises(
        ParamsError, match=r"kubernetes.checkpoints_pvc.*'create: true' needs 'storage_class'"
    ):
        _params(checkpoints_pvc={"name": "ckpt", "mount_path": "/mnt/ckpt", "create": True})
