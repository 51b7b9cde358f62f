"""Promotion against a real `mlflow server` on 127.0.0.1, started by mlflow/start-local.sh (SQLite, proxied
local artifacts).

One server for the module. Versions are registered the way the register stages leave them (a source
run, lineage-free, alias `challenger` on the newest) with the `eval.<key>` tags the evaluate stages write.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from vidprior.cli import app
from vidprior.config import RegistryParams, params_from_dict, params_to_yaml
from vidprior.registry.promote import load_policy
from vidprior.stages import execute

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "mlflow" / "policies"
UNIC_GOOD = {
    "sd_svd.dynamic_degree": 0.25,
    "sd_svd.aesthetic_quality": 0.50,
    "sd_svd.imaging_quality": 0.60,
    "sd_pia.dynamic_degree": 0.25,
    "sd_pia.aesthetic_quality": 0.50,
    "sd_pia.imaging_quality": 0.60,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow/start-local.sh` on a free port; its URI is MLFLOW_TRACKING_URI for the module."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("w")
    # The repository's own start script (a SQLite store and local artifacts under VIDPRIOR_MLFLOW_STORE).
    command = ["bash", str(ROOT / "mlflow" / "start-local.sh")]
    env = {**os.environ, "VIDPRIOR_MLFLOW_STORE": str(root), "VIDPRIOR_MLFLOW_PORT": str(port)}
    # Its own process group: the server forks a uvicorn worker, and teardown must stop both.
    proc = subprocess.Popen(
        command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 90
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.2)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("NO_PROXY", "no_proxy"):
            patch.setenv(name, "127.0.0.1,localhost")
        patch.setenv("MLFLOW_TRACKING_URI", url)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        patch.delenv("VIDPRIOR_PARENT_RUN_ID", raising=False)
        patch.setenv("VIDPRIOR_HOME", str(ROOT))  # where the CLI finds mlflow/policies by default
        patch.chdir(root)
        yield url
    # The store is thrown away: no graceful shutdown to wait for (uvicorn's takes seconds).
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()


@pytest.fixture(scope="module")
def client(server):
    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    client.source_experiment = client.create_experiment("promotion")
    for model in ("unic", "udpdiff"):
        client.create_registered_model(model)
    return client


def register(client, model: str, values: dict[str, float] | None) -> str:
    """A new version of `model` holding alias `challenger`, with `eval.<key>` tags (None: unevaluated)."""
    # Few requests: each costs the single-worker server a database round trip.
    run_id = client.create_run(client.source_experiment, run_name=f"{model}_register").info.run_id
    tags = {f"eval.{key}": repr(float(value)) for key, value in (values or {}).items()}
    version = client.create_model_version(model, f"runs:/{run_id}/model", run_id, tags, await_creation_for=0)
    version = str(version.version)
    client.set_registered_model_alias(model, "challenger", version)
    return version


def champion(client, model: str) -> str:
    return str(client.get_model_version_by_alias(model, "champion").version)


def cli(*args: str):
    return CliRunner().invoke(app, ["registry", "promote", *args])


def test_cli_promotes_refuses_and_is_idempotent(server, client):
    first = register(client, "unic", UNIC_GOOD)
    result = cli("unic", "--tracking-uri", server)
    assert result.exit_code == 0, result.output
    assert f"unic: promoted version {first} to @champion" in result.output
    assert champion(client, "unic") == first
    tags = client.get_model_version("unic", first).tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.compared_to"] == "none"
    assert tags["promotion.reason"].startswith("first champion")
    assert tags["promotion.policy"].startswith("mlflow/policies/unic.yaml sha256:")

    # Worse on aesthetics beyond the margin (better on motion): refused, champion kept, reason recorded.
    worse = register(
        client, "unic", {**UNIC_GOOD, "sd_svd.dynamic_degree": 0.5, "sd_pia.aesthetic_quality": 0.45}
    )
    result = cli("unic")  # MLFLOW_TRACKING_URI and the shipped policy
    assert result.exit_code == 1
    assert "refused: regressed beyond the margin on 1 metric(s)" in result.stderr
    assert "sd_pia.aesthetic_quality 0.5 -> 0.45" in result.stderr
    assert champion(client, "unic") == first
    tags = client.get_model_version("unic", worse).tags
    assert tags["promotion.decision"] == "refused" and tags["promotion.compared_to"] == first
    assert "sd_pia.aesthetic_quality" in tags["promotion.reason"]
    assert tags["promotion.regressed"] == "sd_pia.aesthetic_quality"
    assert tags["promotion.improved"] == "sd_svd.dynamic_degree"
    assert float(tags["promotion.delta.sd_pia.aesthetic_quality"]) == pytest.approx(-0.05)
    assert float(tags["promotion.delta.sd_svd.imaging_quality"]) == 0.0
    model_tags = client.get_registered_model("unic").tags
    assert (
        model_tags["promotion.last_decision"] == "refused" and model_tags["promotion.last_version"] == worse
    )

    better = register(client, "unic", {**UNIC_GOOD, "sd_pia.imaging_quality": 0.65})
    result = cli("unic", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert (record["decision"], record["compared_to"], record["champion_version"]) == (
        "promoted",
        first,
        better,
    )
    assert champion(client, "unic") == better
    assert client.get_model_version("unic", first).tags["promotion.superseded_by"] == better
    decided = client.get_model_version("unic", better).tags

    again = cli("unic")
    assert again.exit_code == 0 and f"version {better} already holds @champion" in again.output
    assert client.get_model_version("unic", better).tags == decided  # nothing rewritten
    assert champion(client, "unic") == better

    # Unevaluated challenger: refused, naming the tags it lacks; a version that moved on is refused too.
    unevaluated = register(client, "unic", None)
    result = cli("unic")
    assert result.exit_code == 1 and "lacks eval tags" in result.stderr
    assert "eval.sd_svd.dynamic_degree" in result.stderr and "eval.sd_pia.imaging_quality" in result.stderr
    result = cli("unic", "--version", worse)
    assert result.exit_code == 1 and f"now holds version {unevaluated}" in result.stderr
    assert champion(client, "unic") == better


def test_cli_errors_on_a_bad_policy_or_model(server, tmp_path):
    result = cli("nosuchmodel", "--policy", str(POLICIES / "unic.yaml"))
    assert result.exit_code == 2 and "is the policy of model 'unic', not of 'nosuchmodel'" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: unic\nmetrics: [{key: sd_svd.dynamic_degree, direction: sideways}]\n")
    result = cli("unic", "--policy", str(bad))
    assert result.exit_code == 2 and f"{bad}: invalid promotion policy" in result.stderr
    assert "metrics.0.direction" in result.stderr
    renamed = tmp_path / "ghost.yaml"
    renamed.write_text((POLICIES / "unic.yaml").read_text().replace("model: unic", "model: ghost"))
    result = cli("ghost", "--policy", str(renamed))
    assert result.exit_code == 2 and "registered model 'ghost' does not exist" in result.stderr


class _Artifact:
    def __init__(self, path: Path):
        self.path = str(path)


class _Metrics:
    def __init__(self):
        self.logged: dict[str, float] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.logged[name] = value


def test_stage_and_component_write_promotion_json(server, client, tmp_path):
    udpdiff = load_policy(POLICIES / "udpdiff.yaml")
    good = {m.key: (300.0 if m.key.endswith("fvd") else 0.9) for m in udpdiff.metrics}
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["registry"] = {"policies_dir": str(POLICIES)}
    params = params_from_dict(data)

    def evaluation(version: str) -> Path:
        folder = tmp_path / f"evaluate_v{version}"
        folder.mkdir()
        (folder / "evaluation.json").write_text(json.dumps({"model": "udpdiff", "version": version}))
        return folder

    first = register(client, "udpdiff", good)
    out = tmp_path / "promotion_1"
    metrics = execute("udpdiff.promote", params, [evaluation(first)], out, metrics_path=tmp_path / "m1.json")
    record = json.loads((out / "promotion.json").read_text())
    assert record["decision"] == "promoted" and record["challenger_version"] == first
    assert metrics["promoted"] == 1.0 and champion(client, "udpdiff") == first
    assert json.loads((tmp_path / "m1.json").read_text()) == {"promoted": 1.0}  # the rest is run-dependent
    run = mlflow.search_runs(
        experiment_names=[params.tracking.experiment],
        filter_string="tags.`vidprior.stage` = 'udpdiff.promote'",
        output_format="list",
    )[0]
    assert run.data.metrics["promoted"] == 1.0
    assert [a.path for a in client.list_artifacts(run.info.run_id, "promotion")] == [
        "promotion/promotion.json"
    ]

    # Evaluated version 2, but the challenger alias moved on to 3 since: refused, and not a stage failure.
    evaluated = register(client, "udpdiff", {**good, "depth.depth_rmse": 0.5})
    newest = register(client, "udpdiff", {**good, "depth.fvd": 250.0})
    out = tmp_path / "promotion_2"
    metrics = execute("udpdiff.promote", params, [evaluation(evaluated)], out, track=False)
    record = json.loads((out / "promotion.json").read_text())
    assert record["decision"] == "refused" and metrics["promoted"] == 0.0
    assert f"version {evaluated} was evaluated, but the alias now holds version {newest}" in record["reason"]
    assert champion(client, "udpdiff") == first

    # The KFP component, with the policy carried as YAML (the pipeline's compiled-in copy).
    from components.register.promote_model import promote_model

    kfp_metrics, out = _Metrics(), tmp_path / "promotion_3"
    promote_model.python_func(
        # No policy where the params point: the carried YAML is what decides.
        params_yaml=params_to_yaml(
            params.model_copy(update={"registry": RegistryParams(policies_dir="/nowhere")})
        ),
        family="udpdiff",
        evaluation=_Artifact(evaluation(newest)),
        output=_Artifact(out),
        metrics=kfp_metrics,
        policy_yaml=(POLICIES / "udpdiff.yaml").read_text(),
        mlflow_tracking_uri=server,
    )
    record = json.loads((out / "promotion.json").read_text())
    assert record["decision"] == "promoted" and record["compared_to"] == first
    assert record["policy"].endswith(f"/udpdiff.yaml {udpdiff.label.split()[-1]}")  # the carried copy
    assert kfp_metrics.logged["promoted"] == 1.0 and kfp_metrics.logged["registry_champion_version"] == 3.0
    assert champion(client, "udpdiff") == newest
    assert client.get_model_version("udpdiff", newest).tags["promotion.improved"] == "depth.fvd"
