"""The tracking-server deployment in mlflow/: Kubernetes manifests valid against the client's models, wired
to a Secret (nothing secret inline), and the local start script. (The script itself starts the server of
tests/integration/test_promotion_server.py.)"""

import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from vidprior.kube.validate import ManifestError, validate_manifest

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "mlflow" / "kubernetes").glob("*.yaml"))


def documents() -> dict[str, dict]:
    docs = [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_mlflow_folder_is_config_not_a_package():
    # A package named mlflow at the repository root would shadow the library.
    assert not list((ROOT / "mlflow").rglob("__init__.py"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_against_the_kubernetes_models(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        validate_manifest(doc)


def test_the_validator_is_not_vacuous():
    deployment = documents()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"] = {"secretRef": "mlflow-tracking"}
    with pytest.raises(ManifestError, match=r"containers\[0\]\.envFrom: expected a list"):
        validate_manifest(deployment)


def test_deployment_takes_its_stores_from_a_secret_and_pins_mlflow():
    docs = documents()
    assert set(docs) == {"Deployment", "Service"}  # no Secret with values in the repository
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    for container in pod["initContainers"] + pod["containers"]:
        # The server's MLflow is the one vidprior's clients speak to (pyproject's pin).
        assert container["image"] == f"ghcr.io/mlflow/mlflow:v{metadata.version('mlflow')}-full"
        env = {e["name"]: e for e in container.get("env", [])}
        for name, entry in env.items():
            if re.search(r"URI|KEY|SECRET|PASSWORD|DESTINATION|ENDPOINT", name):
                assert entry["valueFrom"]["secretKeyRef"]["name"] == "mlflow-tracking", name
            else:
                assert "://" not in str(entry.get("value", "")), name
        # Kubernetes expands $(VAR) only for variables the container defines.
        used = set(
            re.findall(r"\$\((\w+)\)", " ".join(container.get("command", []) + container.get("args", [])))
        )
        assert used <= set(env), used - set(env)
    server = pod["containers"][0]
    args = server["args"]
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args and "--serve-artifacts" in args
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in args
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in server["env"] if "valueFrom" in e}
    assert {
        "backend-store-uri",
        "artifacts-destination",
        "aws-access-key-id",
        "aws-secret-access-key",
    } <= keys
    assert pod["initContainers"][0]["command"][:3] == ["mlflow", "db", "upgrade"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"


def test_service_selects_the_server_pods():
    docs = documents()
    service, template = docs["Service"]["spec"], docs["Deployment"]["spec"]["template"]
    assert service["selector"].items() <= template["metadata"]["labels"].items()
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"] == service["selector"]
    ports = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= ports


def test_local_start_script():
    script = ROOT / "mlflow" / "start-local.sh"
    assert script.stat().st_mode & 0o111  # executable
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "--host 127.0.0.1" in text and "sqlite:///$store/mlflow.db" in text
    assert '--artifacts-destination "$store/mlartifacts"' in text
    assert 'MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"' in text
