"""`vidprior pipelines submit|schedule`: params overrides, cron conversion, and the requests the real
`kfp.Client` sends to a KFP API server (a local fake on 127.0.0.1 speaking the v2beta1 REST protocol)."""

import json
from pathlib import Path

import pytest
import yaml
from kfp_api import fake_kfp
from typer.testing import CliRunner

from pipelines.submit import (
    CronError,
    kfp_cron,
    overrides_to_dict,
    parse_override,
    resolve_params,
    run_arguments,
)
from vidprior.cli import app
from vidprior.config import ParamsError, params_from_dict

ROOT = Path(__file__).resolve().parents[2]
PARAMS = str(ROOT / "params.yaml")
PAPER = str(ROOT / "params" / "paper.yaml")
GOLDEN_PAPER = ROOT / "tests" / "golden" / "unic.paper.yaml"


# --------------------------------------------------------------------------- cron


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("0 3 * * SUN", "0 0 3 * * SUN"),
        ("*/15 * * * *", "0 */15 * * * *"),
        ("30 2 1,15 jan-jun ?", "0 30 2 1,15 jan-jun ?"),
        ("0 4 * * MON-FRI", "0 0 4 * * MON-FRI"),
        ("5/10 0-23/2 * * 0,6", "0 5/10 0-23/2 * * 0,6"),
        ("  0   3 * *  1 ", "0 0 3 * * 1"),
        ("15 0 3 * * 1", "15 0 3 * * 1"),  # six fields: KFP's form, kept
        ("@daily", "0 0 0 * * *"),
        ("@WEEKLY", "0 0 0 * * 0"),
    ],
)
def test_cron_is_converted_to_kfp_six_fields(given, expected):
    assert kfp_cron(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "cron expression is empty"),
        ("* * *", "expected 5 fields .* got 3"),
        ("* * * * * * *", "got 7"),
        ("61 * * * *", "minute field '61': 61 is out of range 0-59"),
        ("* 24 * * *", "hour field '24': 24 is out of range 0-23"),
        ("* * 0 * *", "day of month field '0': 0 is out of range 1-31"),
        ("* * * 13 *", "month field '13': 13 is out of range 1-12"),
        ("* * * FOO *", r"month field 'FOO': 'FOO' is not a value \(1-12 or JAN/FEB/"),
        ("* * * * 7", r"day of week field '7': 7 is out of range 0-6 \(use 0 for Sunday"),
        ("* * * * MON-", "day of week field 'MON-': '' is not a value"),
        ("*/0 * * * *", "minute field '\\*/0': step '0' in '\\*/0' must be a whole number >= 1"),
        ("*/x * * * *", "step 'x'"),
        ("*/61 * * * *", "step 61 in '\\*/61' exceeds the range 0-59"),
        ("50-10 * * * *", r"range '50-10' runs backwards \(50 > 10\)"),
        ("1,,2 * * * *", "minute field '1,,2': empty list item"),
        ("? * * * *", "minute field '\\?': '\\?' is only allowed in the day-of-month and day-of-week"),
        ("60 0 3 * * *", "second field '60': 60 is out of range 0-59"),
        ("@fortnightly", "unknown macro"),
        ("0 3 * * SUN#2", "day of week field 'SUN#2'"),
    ],
)
def test_malformed_cron_is_rejected_naming_the_field(given, message):
    with pytest.raises(CronError, match=message):
        kfp_cron(given)


# --------------------------------------------------------------------------- params overrides


def test_overrides_parse_yaml_values_into_nested_keys():
    assert parse_override("unic.train.steps=100") == ("unic.train.steps", 100)
    assert parse_override("unic.prompts.sources=[a.parquet, b.csv]") == (
        "unic.prompts.sources",
        ["a.parquet", "b.csv"],
    )
    assert parse_override("udpdiff.panda.source_uri=null") == ("udpdiff.panda.source_uri", None)
    assert parse_override("images.base=reg/x:1=2") == (
        "images.base",
        "reg/x:1=2",
    )  # only the first '=' splits
    assert overrides_to_dict(["a.b=1", "a.c=x", "a.b=2"]) == {"a": {"b": 2, "c": "x"}}


def test_overrides_are_validated_naming_the_key_and_source():
    params = resolve_params([PARAMS], ["unic.train.steps=7", "images.base=reg.example/base:2"])
    assert params.unic.train.steps == 7 and params.images.base == "reg.example/base:2"
    with pytest.raises(ParamsError, match=r"--set: unknown key 'unic.trian' \(expected one of: .*train"):
        resolve_params([PARAMS], ["unic.trian.steps=7"])
    with pytest.raises(ParamsError, match=r"--set: key 'unic.train.steps': .*got 'many'"):
        resolve_params([PARAMS], ["unic.train.steps=many"])
    with pytest.raises(ParamsError, match=r"--set seed.x: 'seed' is a value \(0\), not a section"):
        resolve_params([PARAMS], ["seed.x=1"])
    with pytest.raises(ParamsError, match="expected KEY=VALUE"):
        resolve_params([PARAMS], ["unic.train.steps"])
    with pytest.raises(ParamsError, match="has an empty part"):
        resolve_params([PARAMS], ["unic..steps=1"])
    with pytest.raises(ParamsError, match=r"--set: key 'unic.train.steps': Input should be greater than"):
        resolve_params([PARAMS], ["unic.train.steps=-1"])


def test_a_params_file_error_still_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("unic:\n  train:\n    steps: -5\n")
    with pytest.raises(ParamsError, match=rf"{bad}: key 'unic.train.steps'"):
        resolve_params([PARAMS, bad], ["seed=1"])


def test_run_arguments_need_a_vidprior_pipeline(tmp_path):
    params = resolve_params([PARAMS])
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"root": {"inputDefinitions": {"parameters": {"x": {}}}}}))
    with pytest.raises(ValueError, match="has no input params_yaml"):
        run_arguments(other, params, None)


# --------------------------------------------------------------------------- against the fake KFP API


def invoke(*args: str):
    result = CliRunner().invoke(app, ["pipelines", *args], catch_exceptions=False)
    return result


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_submit_creates_a_run_with_the_overridden_params(monkeypatch):
    with fake_kfp() as kfp:
        result = invoke(
            "submit", "unic", "--host", kfp.url, "--token", "secret-token",
            "--params", PARAMS, "--params", PAPER, "--set", "unic.train.steps=123",
            "--package", str(GOLDEN_PAPER), "--experiment", "retraining",
            "--mlflow-tracking-uri", "http://mlflow.example:5000",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    paths = [(r.method, r.path) for r in kfp.requests]
    assert paths[0] == ("GET", "/apis/v2beta1/healthz")
    assert ("POST", "/apis/v2beta1/runs") in paths
    assert all(r.headers.get("authorization") == "Bearer secret-token" for r in kfp.requests)

    (experiment,) = kfp.bodies("POST", "/experiments")
    assert experiment["display_name"] == "retraining"
    (run,) = kfp.bodies("POST", "/runs")
    assert run["experiment_id"] == kfp.experiments[0]["experiment_id"]
    parameters = run["runtime_config"]["parameters"]
    assert set(parameters) == {"params_yaml", "mlflow_tracking_uri"}
    assert parameters["mlflow_tracking_uri"] == "http://mlflow.example:5000"
    sent = params_from_dict(yaml.safe_load(parameters["params_yaml"]))
    assert sent.unic.train.steps == 123 and sent.profile == "paper"
    assert run["display_name"] == f"vidprior-unic paper {sent.digest()}"
    # The package travels whole: the pipeline and its kubernetes placement.
    spec = run["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "vidprior-unic"
    gpu = spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-train-classifier"
    ]
    assert gpu["nodeAffinity"][0]["matchExpressions"][0]["key"] == "nvidia.com/gpu.product"
    assert last_json(result.output)["run_id"]


def test_schedule_compiles_and_creates_an_enabled_recurring_run():
    with fake_kfp() as kfp:
        kfp.experiments.append({"experiment_id": "exp-1", "display_name": "vidprior", "namespace": ""})
        result = invoke(
            "schedule", "unic", "--host", kfp.url, "--cron", "0 3 * * SUN",
            "--params", PARAMS, "--set", "unic.prompts.max_prompts=8", "--name", "weekly-unic",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert kfp.bodies("POST", "/experiments") == []  # the experiment exists: reused, not duplicated
    (recurring,) = kfp.bodies("POST", "/recurringruns")
    assert recurring["experiment_id"] == "exp-1"
    assert recurring["display_name"] == "weekly-unic"
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * SUN"}}
    assert str(recurring["max_concurrency"]) == "1"
    assert recurring["no_catchup"] is True
    assert recurring["mode"] == "ENABLE"
    sent = params_from_dict(yaml.safe_load(recurring["runtime_config"]["parameters"]["params_yaml"]))
    assert sent.unic.prompts.max_prompts == 8
    # Compiled here with the tiny params: no platform spec, only the pipeline.
    assert recurring["pipeline_spec"]["pipelineInfo"]["name"] == "vidprior-unic"
    assert "platform_spec" not in recurring["pipeline_spec"]
    assert last_json(result.output) == {
        "recurring_run_id": last_json(result.output)["recurring_run_id"],
        "name": "weekly-unic",
        "cron": "0 0 3 * * SUN",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["schedule", "unic", "--cron", "0 25 * * *"], "hour field '25': 25 is out of range 0-23"),
        (["submit", "unic", "--set", "unic.train.stepz=1"], "--set: unknown key 'unic.train.stepz'"),
        (["submit", "nope"], "unknown pipeline 'nope'; expected one of unic, udpdiff"),
    ],
)
def test_bad_input_fails_before_anything_reaches_the_server(args, message):
    with fake_kfp() as kfp:
        result = CliRunner().invoke(app, ["pipelines", *args, "--host", kfp.url, "--params", PARAMS])
    assert result.exit_code == 2
    assert message in result.output
    assert [r.path for r in kfp.requests if r.method == "POST"] == []


def test_an_http_error_answer_is_reported_not_raised():
    with fake_kfp() as kfp:
        kfp.reject["/runs"] = 403
        result = CliRunner().invoke(
            app, ["pipelines", "submit", "unic", "--host", kfp.url, "--package", str(GOLDEN_PAPER)]
        )
    assert result.exit_code == 2
    assert "403" in result.output and "refused by the test" in result.output
