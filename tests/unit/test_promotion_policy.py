"""Promotion policies: parsing errors that name the file and the field, and the decision on version tags."""

import ast
import math
import re
from pathlib import Path

import pytest
import yaml

from vidprior.config import load_params
from vidprior.registry.promote import (
    MetricComparison,
    PolicyError,
    PromotionDecision,
    decide,
    execute_for_component,
    load_policy,
    policy_from_dict,
    policy_path,
)

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "mlflow" / "policies"


def policy(**overrides):
    data = {
        "model": "m",
        "metrics": [
            {"key": "sd_svd.dynamic_degree", "direction": "higher", "margin": 0.02},
            {"key": "sd_svd.aesthetic_quality", "direction": "higher", "margin": 0.002},
            {"key": "depth.fvd", "direction": "lower", "margin": 1.0, "relative_margin": 0.02},
        ],
    }
    data.update(overrides)
    return policy_from_dict(data, "test.yaml")


def tags(dd=0.5, aq=0.6, fvd=300.0, **extra):
    values = {"sd_svd.dynamic_degree": dd, "sd_svd.aesthetic_quality": aq, "depth.fvd": fvd}
    return {**{f"eval.{k}": repr(v) for k, v in values.items()}, **extra}


def outcomes(verdict) -> dict[str, str]:
    return {c.key: c.outcome for c in verdict.comparisons}


# --------------------------------------------------------------------------- shipped policies


def _module_constant(path: Path, name: str) -> str:
    # Read without importing: the udpdiff model module costs a torch import.
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} defines no {name}")


@pytest.mark.parametrize("family", ["unic", "udpdiff"])
def test_shipped_policies_match_models_and_evaluations(family):
    shipped = load_policy(POLICIES / f"{family}.yaml")
    registry = _module_constant(ROOT / f"src/vidprior/registry/{family}_model.py", "MODEL_NAME")
    stage = _module_constant(ROOT / f"src/vidprior/{family}/promote.py", "MODEL_NAME")
    assert shipped.model == registry == stage == family
    assert (shipped.aliases.challenger, shipped.aliases.champion) == ("challenger", "champion")
    assert shipped.decision.max_regressions == 0 and shipped.decision.min_improvements == 1
    # Random tiny models have no reason to beat their baseline: `make run` must still promote version 1.
    assert not shipped.baseline.enabled
    assert re.fullmatch(rf"mlflow/policies/{family}.yaml sha256:[0-9a-f]{{12}}", shipped.label)

    # Every policy key is one the tiny evaluation measures (else no version could ever be promoted).
    params = load_params([ROOT / "params.yaml"])
    if family == "unic":
        evaluate = params.unic.evaluate
        measured = {f"{w.replace('-', '_')}.{m}" for w in evaluate.workflows for m in evaluate.metrics}
    else:
        evaluate = params.udpdiff.evaluate
        per_task = [*evaluate.metrics, *(["fvd"] if evaluate.fvd else [])]
        measured = {f"{t}.{m}" for t in params.udpdiff.sample.tasks for m in per_task}
        measured |= {"depth.depth_delta1", "depth.depth_rmse"}
    assert {m.key for m in shipped.metrics} <= measured


def test_policy_path_is_relative_to_the_project_root(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDPRIOR_HOME", str(tmp_path))
    assert policy_path("unic") == tmp_path / "mlflow" / "policies" / "unic.yaml"
    assert policy_path("udpdiff", "conf/p") == tmp_path / "conf" / "p" / "udpdiff.yaml"
    assert policy_path("unic", tmp_path / "abs") == tmp_path / "abs" / "unic.yaml"
    assert load_params([ROOT / "params.yaml"]).registry.policies_dir == "mlflow/policies"


# --------------------------------------------------------------------------- parsing errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrics": [{"key": "sd_svd.dynamic_degree", "direction": "up"}]}, "key 'metrics.0.direction'"),
        (
            {"metrics": [{"key": "sd_svd.dynamic_degree", "direction": "higher", "margin": -1}]},
            "metrics.0.margin",
        ),
        (
            {"metrics": [{"key": "sd_svd.dynamic_degree", "direction": "higher", "tolerance": 1}]},
            "unknown key 'metrics.0.tolerance'",
        ),
        ({"metrics": [{"key": "sd_svd.dynamism", "direction": "higher"}]}, "key 'metrics.0.key': expected"),
        ({"metrics": [{"key": "dynamic_degree", "direction": "higher"}]}, "'<group>.<metric>'"),
        ({"metrics": [{"direction": "higher"}]}, "missing required key 'metrics.0.key'"),
        ({"metrics": []}, "key 'metrics'"),
        ({"model": None}, "key 'model'"),
        ({"decision": {"min_improvements": 4}}, "can never be met with 3 metric(s)"),
        ({"decision": {"max_regressions": "one"}}, "key 'decision.max_regressions'"),
        ({"aliases": {"challenger": "champion"}}, "must be different aliases"),
        ({"baseline": {"enabled": True, "metrics": ["depth.depth_rmse"]}}, "not among the policy's metrics"),
        ({"baseline": {"enabled": True}}, "baseline.enabled needs baseline.metrics"),
        ({"owner": "me"}, "unknown key 'owner'"),
    ],
)
def test_policy_errors_name_the_file_and_the_field(change, message):
    with pytest.raises(PolicyError) as error:
        policy(**change)
    assert str(error.value).startswith("test.yaml: invalid promotion policy")
    assert message in str(error.value)


def test_repeated_metric_is_an_error():
    rule = {"key": "depth.fvd", "direction": "lower"}
    with pytest.raises(PolicyError, match=r"repeated: \['depth.fvd'\]"):
        policy(metrics=[rule, rule])


def test_policy_file_errors(tmp_path):
    with pytest.raises(PolicyError, match="nope.yaml: promotion policy not found"):
        load_policy(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(PolicyError, match="broken.yaml: not valid YAML"):
        load_policy(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- model: m\n")
    with pytest.raises(PolicyError, match="list.yaml: expected a mapping at the top level, got list"):
        load_policy(listed)
    wrong = tmp_path / "wrong.yaml"
    data = yaml.safe_load((POLICIES / "unic.yaml").read_text())
    data["metrics"][2]["direction"] = "lower-is-better"
    wrong.write_text(yaml.safe_dump(data))
    with pytest.raises(PolicyError, match=r"wrong.yaml: .*\n  key 'metrics.2.direction'"):
        load_policy(wrong)


# --------------------------------------------------------------------------- decisions on tags


def test_first_version_is_promoted_without_champion():
    verdict = decide(policy(), tags(), None)
    assert verdict.accepted and "first champion" in verdict.reason and verdict.comparisons == ()


def test_challenger_that_beats_the_champion_is_promoted():
    verdict = decide(policy(), tags(dd=0.6), tags(dd=0.5), " (version 1)")
    assert verdict.accepted
    assert outcomes(verdict) == {
        "sd_svd.dynamic_degree": "improved",
        "sd_svd.aesthetic_quality": "within_margin",
        "depth.fvd": "within_margin",
    }
    improved = verdict.comparisons[0]
    assert improved.challenger == 0.6 and improved.champion == 0.5
    assert math.isclose(improved.delta, 0.1) and improved.margin == 0.02
    assert verdict.reason.startswith("beats the champion (version 1): improved sd_svd.dynamic_degree")


def test_regression_beyond_margin_is_refused_even_with_improvements():
    verdict = decide(policy(), tags(dd=0.7, aq=0.59), tags())
    assert not verdict.accepted
    assert outcomes(verdict)["sd_svd.aesthetic_quality"] == "regressed"
    assert "regressed beyond the margin on 1 metric(s) (at most 0 allowed): sd_svd.aesthetic_quality" in (
        verdict.reason
    )
    assert "0.6 -> 0.59" in verdict.reason


def test_a_tolerated_regression_when_the_policy_allows_one():
    verdict = decide(policy(decision={"max_regressions": 1}), tags(dd=0.7, aq=0.59), tags())
    assert verdict.accepted and "tolerated regressions: sd_svd.aesthetic_quality" in verdict.reason


def test_changes_within_margin_are_noise_not_improvement():
    # +0.019 < margin 0.02; -0.0019 > -0.002; FVD -5 < max(1, 2% of 300) = 6
    verdict = decide(policy(), tags(dd=0.519, aq=0.5981, fvd=295.0), tags())
    assert not verdict.accepted
    assert set(outcomes(verdict).values()) == {"within_margin"}
    assert verdict.reason == "improved beyond the margin on 0 of 3 metric(s); the policy needs at least 1"
    assert decide(policy(decision={"min_improvements": 0}), tags(dd=0.519), tags()).accepted


def test_equal_to_the_margin_is_not_beyond_it():
    exact = policy(metrics=[{"key": "sd_svd.dynamic_degree", "direction": "higher", "margin": 0.25}])
    assert outcomes(decide(exact, tags(dd=0.75), tags(dd=0.5))) == {"sd_svd.dynamic_degree": "within_margin"}
    assert outcomes(decide(exact, tags(dd=0.25), tags(dd=0.5))) == {"sd_svd.dynamic_degree": "within_margin"}


def test_lower_is_better_with_a_relative_margin():
    # margin for FVD = max(1.0, 0.02 * 300) = 6: lower by 7 improves, higher by 7 regresses.
    better = decide(policy(), tags(fvd=293.0), tags(fvd=300.0))
    assert better.accepted and outcomes(better)["depth.fvd"] == "improved"
    assert better.comparisons[2].margin == pytest.approx(6.0) and better.comparisons[2].delta == -7.0
    worse = decide(policy(), tags(dd=0.9, fvd=307.0), tags(fvd=300.0))
    assert not worse.accepted and outcomes(worse)["depth.fvd"] == "regressed"
    # The absolute margin wins when the champion's value is small: max(1.0, 0.02 * 10) = 1.
    assert outcomes(decide(policy(), tags(fvd=8.5), tags(fvd=10.0)))["depth.fvd"] == "improved"


def test_missing_or_non_numeric_tags_refuse_naming_them():
    challenger = tags()
    del challenger["eval.depth.fvd"]
    challenger["eval.sd_svd.aesthetic_quality"] = "nan"
    verdict = decide(policy(), challenger, None)
    assert not verdict.accepted
    assert verdict.missing == ("eval.sd_svd.aesthetic_quality='nan'", "eval.depth.fvd")
    assert "lacks eval tags" in verdict.reason and "eval.depth.fvd" in verdict.reason
    assert "run the evaluate stage on it first" in verdict.reason
    assert not decide(policy(), tags(**{"eval.depth.fvd": "n/a"}), None).accepted


def test_champion_without_the_tags_cannot_be_compared():
    champion = tags()
    del champion["eval.sd_svd.dynamic_degree"]
    verdict = decide(policy(), tags(dd=0.9), champion, " (version 3)")
    assert not verdict.accepted
    assert "the champion (version 3) lacks eval tags: eval.sd_svd.dynamic_degree" in verdict.reason


def test_baseline_gate_compares_the_challenger_with_its_own_baseline():
    gated = policy(baseline={"enabled": True, "metrics": ["sd_svd.dynamic_degree"]})
    ok = decide(gated, tags(dd=0.5, **{"eval_baseline.sd_svd.dynamic_degree": "0.49"}), None)
    assert ok.accepted and [c.outcome for c in ok.baseline] == ["within_margin"]
    worse = decide(gated, tags(dd=0.5, **{"eval_baseline.sd_svd.dynamic_degree": "0.6"}), None)
    assert not worse.accepted and "worse than its own baseline" in worse.reason
    missing = decide(gated, tags(), None)
    assert not missing.accepted and missing.missing == ("eval_baseline.sd_svd.dynamic_degree",)
    # Off (the shipped default): the baseline tags are not even read.
    assert decide(policy(), tags(), None).accepted


def test_decision_summary_and_record():
    comparison = MetricComparison("depth.fvd", "lower", 293.0, 300.0, -7.0, 6.0, "improved")
    decision = PromotionDecision(
        model="udpdiff",
        decision="promoted",
        reason="beats the champion",
        challenger_version="3",
        compared_to="2",
        champion_version="3",
        policy="p.yaml sha256:abc",
        comparisons=(comparison,),
    )
    text = decision.summary()
    assert text.splitlines()[0] == "udpdiff: promoted version 3 to @champion (champion was version 2)"
    assert "depth.fvd" in text and "improved" in text and "-7" in text
    record = decision.to_dict()
    assert record["ok"] is True and record["comparisons"][0]["outcome"] == "improved"
    refused = PromotionDecision("unic", "refused", "why", "4", "3", "3", "p")
    assert not refused.ok and refused.summary().startswith("unic: refused to promote version 4")


def test_component_helper_rejects_other_stages(tmp_path):
    with pytest.raises(ValueError, match="unknown promote stage 'unic.train'"):
        execute_for_component("unic.train", "", str(tmp_path), str(tmp_path / "out"), None)
