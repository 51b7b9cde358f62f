"""Promotion: move the `champion` alias to the `challenger` version only when it beats the champion.

A policy (`mlflow/policies/<model>.yaml`, see the comments there) names the metrics, read from the
versions' `eval.<key>` tags that the evaluate stages write, with a direction and a margin each, and how
the per-metric outcomes combine. For every metric the challenger is compared with the champion:

- `better` = challenger - champion for `higher` metrics, champion - challenger for `lower` ones;
- the margin is `max(margin, relative_margin * |champion|)`;
- `improved` when better > margin, `regressed` when better < -margin, else `within_margin`.

The challenger is promoted when at most `decision.max_regressions` metrics regressed and at least
`decision.min_improvements` improved (default 0 and 1: nothing worse beyond noise, something better beyond
it). A model with no champion yet promotes its first evaluated challenger. The challenger must carry
every `eval.<key>` tag as a finite number, else it is refused with the missing tags named.

Every decision is recorded: on the challenger version (`promotion.decision`, `promotion.reason`,
`promotion.compared_to`, `promotion.policy`, `promotion.decided_at`, `promotion.improved` and
`promotion.regressed` (comma-separated keys), and per metric `promotion.delta.<key>` = challenger -
champion), on the superseded champion (`promotion.superseded_by`, `promotion.superseded_at`) and on the
registered model (`promotion.last_version`, `promotion.last_decision`). A challenger that
already is the champion is left alone and reported as `already_champion`. Aliases only: registry stages
are deprecated in MLflow and never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from vidprior.models.spec import StrictModel
from vidprior.registry.pyfunc import CHALLENGER

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from vidprior.config import Params

CHAMPION = "champion"
EVAL_TAG = "eval."  # + <key>: the candidate's measured value (written by the evaluate stages)
BASELINE_TAG = "eval_baseline."  # + <key>: the same evaluation's baseline (unguided / base model)
TAG = "promotion."
PROMOTION_FILE = "promotion.json"  # a promote stage's output
PROMOTE_STAGES = {"unic.promote": "vidprior.unic.promote", "udpdiff.promote": "vidprior.udpdiff.promote"}
MAX_TAG_VALUE = 5000  # MLflow's limit on a tag value

Decision = Literal["promoted", "already_champion", "refused"]
Outcome = Literal["improved", "within_margin", "regressed"]


class PolicyError(ValueError):
    """A policy file is unreadable or does not match the schema; the message names file and field."""


class PromotionError(RuntimeError):
    """The registry cannot be asked (unknown model, wrong policy for it): not a refusal, an error."""


# --------------------------------------------------------------------------- the policy


class MetricRule(StrictModel):
    key: str = Field(min_length=3)  # <group>.<metric>, e.g. sd_svd.dynamic_degree
    direction: Literal["higher", "lower"]
    margin: float = Field(0.0, ge=0.0)  # absolute, in the metric's own units
    relative_margin: float = Field(0.0, ge=0.0, lt=1.0)  # fraction of |champion value|

    @field_validator("key")
    @classmethod
    def _known_metric(cls, key: str) -> str:
        from vidprior.evaluate.names import METRICS

        group, _, metric = key.rpartition(".")
        if not group or metric not in METRICS:
            raise ValueError(f"expected '<group>.<metric>' with a metric from {list(METRICS)}")
        return key

    def margin_at(self, champion: float) -> float:
        return max(self.margin, self.relative_margin * abs(champion))

    def better_by(self, challenger: float, reference: float) -> float:
        """How much better `challenger` is than `reference` (negative: worse), in the metric's units."""
        return challenger - reference if self.direction == "higher" else reference - challenger

    def outcome(self, challenger: float, reference: float) -> Outcome:
        better, margin = self.better_by(challenger, reference), self.margin_at(reference)
        if better > margin:
            return "improved"
        return "regressed" if better < -margin else "within_margin"


class Aliases(StrictModel):
    challenger: str = Field(CHALLENGER, min_length=1)
    champion: str = Field(CHAMPION, min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> Aliases:
        if self.challenger == self.champion:
            raise ValueError(f"challenger and champion must be different aliases, both are {self.champion!r}")
        return self


class DecisionRule(StrictModel):
    max_regressions: int = Field(0, ge=0)
    min_improvements: int = Field(1, ge=0)


class BaselineGate(StrictModel):
    enabled: bool = False
    metrics: list[str] = Field(default_factory=list)


class Policy(StrictModel):
    model: str = Field(min_length=1)
    aliases: Aliases = Aliases()
    metrics: list[MetricRule] = Field(min_length=1)
    decision: DecisionRule = DecisionRule()
    baseline: BaselineGate = BaselineGate()
    _source: str = PrivateAttr("<policy>")
    _digest: str = PrivateAttr("")

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        keys = [m.key for m in self.metrics]
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise ValueError(f"metric keys must be unique; repeated: {duplicated}")
        if self.decision.min_improvements > len(keys):
            raise ValueError(
                f"decision.min_improvements={self.decision.min_improvements} can never be met with "
                f"{len(keys)} metric(s)"
            )
        unknown = [k for k in self.baseline.metrics if k not in keys]
        if unknown:
            raise ValueError(f"baseline.metrics {unknown} are not among the policy's metrics {keys}")
        if self.baseline.enabled and not self.baseline.metrics:
            raise ValueError("baseline.enabled needs baseline.metrics (the keys to check)")
        return self

    @property
    def source(self) -> str:
        return self._source

    @property
    def label(self) -> str:
        """Where the policy came from (relative to the project root when inside it) and a hash of its
        content, as recorded with each decision."""
        from vidprior.registry.tracking import project_root

        where = self._source
        with contextlib.suppress(ValueError, OSError):  # outside the project: the path as given
            where = Path(where).resolve().relative_to(project_root()).as_posix()
        return f"{where} sha256:{self._digest}" if self._digest else where

    def rule(self, key: str) -> MetricRule:
        return next(m for m in self.metrics if m.key == key)


def _describe(error: Mapping[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "<top level>"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if error["type"] == "missing":
        return f"missing required key '{key}'"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"key '{key}': {message}; got {error.get('input')!r}"


def policy_from_dict(data: Any, source: str = "<policy>", digest: str = "") -> Policy:
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise PolicyError(f"{source}: invalid promotion policy:\n  " + "\n  ".join(lines)) from None
    policy._source, policy._digest = source, digest
    return policy


def load_policy(path: Path | str) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{path}: promotion policy not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    return policy_from_dict(data, str(path), hashlib.sha256(text.encode()).hexdigest()[:12])


def policy_path(model: str, policies_dir: str | Path | None = None) -> Path:
    """`<policies_dir>/<model>.yaml`; a relative dir is taken from the project root (VIDPRIOR_HOME...)."""
    from vidprior.config import RegistryParams
    from vidprior.registry.tracking import project_root

    directory = Path(policies_dir if policies_dir is not None else RegistryParams().policies_dir)
    if not directory.is_absolute():
        directory = project_root() / directory
    return directory / f"{model}.yaml"


# --------------------------------------------------------------------------- the decision on tags


@dataclass(frozen=True)
class MetricComparison:
    key: str
    direction: str
    challenger: float
    champion: float
    delta: float  # challenger - champion (sign as measured; `outcome` accounts for the direction)
    margin: float
    outcome: Outcome


@dataclass(frozen=True)
class Verdict:
    """What the policy says about a challenger's tags against a champion's (None: there is none)."""

    accepted: bool
    reason: str
    comparisons: tuple[MetricComparison, ...] = ()
    baseline: tuple[MetricComparison, ...] = ()  # challenger vs its own eval_baseline.<key>
    missing: tuple[str, ...] = ()  # challenger tags absent or not a finite number


def _values(tags: Mapping[str, str], prefix: str, keys: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    found, bad = {}, []
    for key in keys:
        raw = tags.get(prefix + key)
        try:
            value = float(raw) if raw is not None else math.nan
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            found[key] = value
        else:
            bad.append(prefix + key if raw is None else f"{prefix}{key}={raw!r}")
    return found, bad


def _compare(
    policy: Policy, keys: Sequence[str], challenger: dict, reference: dict
) -> list[MetricComparison]:
    out = []
    for key in keys:
        rule = policy.rule(key)
        new, old = challenger[key], reference[key]
        out.append(
            MetricComparison(
                key, rule.direction, new, old, new - old, rule.margin_at(old), rule.outcome(new, old)
            )
        )
    return out


def _listing(items: Sequence[MetricComparison]) -> str:
    return ", ".join(
        f"{c.key} {c.champion:.6g} -> {c.challenger:.6g} ({c.direction} is better, margin {c.margin:.3g})"
        for c in items
    )


def decide(
    policy: Policy,
    challenger: Mapping[str, str],
    champion: Mapping[str, str] | None,
    champion_label: str = "",
) -> Verdict:
    """The policy's verdict on the challenger's version tags against the champion's (None: no champion)."""
    keys = [m.key for m in policy.metrics]
    new, missing = _values(challenger, EVAL_TAG, keys)
    baseline: list[MetricComparison] = []
    if policy.baseline.enabled:
        base, base_missing = _values(challenger, BASELINE_TAG, policy.baseline.metrics)
        missing += base_missing
    if missing:
        return Verdict(
            False,
            f"the challenger lacks eval tags (absent or not a finite number): {', '.join(missing)}; "
            "run the evaluate stage on it first",
            missing=tuple(missing),
        )
    if policy.baseline.enabled:
        baseline = _compare(policy, policy.baseline.metrics, new, base)
        worse = [c for c in baseline if c.outcome == "regressed"]
        if worse:
            return Verdict(
                False,
                f"worse than its own baseline (eval_baseline.<key>) beyond the margin on: {_listing(worse)}",
                baseline=tuple(baseline),
            )
    if champion is None:
        return Verdict(True, "first champion: no version held the champion alias", baseline=tuple(baseline))
    old, champion_missing = _values(champion, EVAL_TAG, keys)
    if champion_missing:
        return Verdict(
            False,
            f"the champion{champion_label} lacks eval tags: {', '.join(champion_missing)}; it cannot be "
            "compared: evaluate it, or move the champion alias by hand",
            baseline=tuple(baseline),
        )
    comparisons = _compare(policy, keys, new, old)
    regressed = [c for c in comparisons if c.outcome == "regressed"]
    improved = [c for c in comparisons if c.outcome == "improved"]
    rule = policy.decision
    if len(regressed) > rule.max_regressions:
        reason = (
            f"regressed beyond the margin on {len(regressed)} metric(s) (at most {rule.max_regressions} "
            f"allowed): {_listing(regressed)}"
        )
        return Verdict(False, reason, tuple(comparisons), tuple(baseline))
    if len(improved) < rule.min_improvements:
        reason = (
            f"improved beyond the margin on {len(improved)} of {len(keys)} metric(s); "
            f"the policy needs at least {rule.min_improvements}"
        )
        return Verdict(False, reason, tuple(comparisons), tuple(baseline))
    reason = f"beats the champion{champion_label}: improved {_listing(improved) or 'nothing (none required)'}"
    if regressed:
        reason += f"; tolerated regressions: {_listing(regressed)}"
    return Verdict(True, reason, tuple(comparisons), tuple(baseline))


# --------------------------------------------------------------------------- against the registry


@dataclass(frozen=True)
class PromotionDecision:
    model: str
    decision: Decision
    reason: str
    challenger_version: str | None  # the version judged (None: no version holds the challenger alias)
    compared_to: str | None  # the champion it was compared with (None: there was none)
    champion_version: str | None  # who holds the champion alias after the decision
    policy: str
    champion_alias: str = CHAMPION
    challenger_alias: str = CHALLENGER
    comparisons: tuple[MetricComparison, ...] = ()
    baseline: tuple[MetricComparison, ...] = ()
    missing: tuple[str, ...] = ()
    decided_at: str = ""
    tags: dict[str, str] = field(default_factory=dict)  # what was written on the challenger version

    @property
    def ok(self) -> bool:
        """The challenger is the champion now (promoted, or it already was)."""
        return self.decision != "refused"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        head = {
            "promoted": f"promoted version {self.challenger_version} to @{self.champion_alias}",
            "already_champion": f"version {self.challenger_version} already holds @{self.champion_alias}",
            "refused": f"refused to promote version {self.challenger_version or '-'}",
        }[self.decision]
        was = f" (champion was version {self.compared_to})" if self.compared_to else ""
        lines = [f"{self.model}: {head}{was}", f"  reason: {self.reason}", f"  policy: {self.policy}"]
        if self.comparisons:
            lines.append(
                f"  {'metric':<36} {'better':>6} {'champion':>10} {'challenger':>10} {'delta':>10} "
                f"{'margin':>8}  outcome"
            )
            lines += [
                f"  {c.key:<36} {c.direction:>6} {c.champion:>10.4g} {c.challenger:>10.4g} "
                f"{c.delta:>+10.3g} {c.margin:>8.3g}  {c.outcome}"
                for c in self.comparisons
            ]
        return "\n".join(lines)


def _alias_versions(client: MlflowClient, model: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise PromotionError(f"registered model {model!r} does not exist in the registry") from None
        raise
    return {alias: str(version) for alias, version in (registered.aliases or {}).items()}


def _format(value: float) -> str:
    return f"{value:.10g}"


def _decision_tags(verdict: Verdict, decision: Decision, compared_to: str | None, policy: Policy, at: str):
    tags = {
        f"{TAG}decision": decision,
        f"{TAG}reason": verdict.reason[:MAX_TAG_VALUE],
        f"{TAG}compared_to": compared_to or "none",
        f"{TAG}policy": policy.label[:MAX_TAG_VALUE],
        f"{TAG}decided_at": at,
    }
    if verdict.comparisons:
        # Lists rather than a tag per metric and outcome: every tag is a request to the tracking server.
        for outcome in ("improved", "regressed"):
            tags[f"{TAG}{outcome}"] = ",".join(c.key for c in verdict.comparisons if c.outcome == outcome)
    for c in verdict.comparisons:
        tags[f"{TAG}delta.{c.key}"] = _format(c.delta)
    for c in verdict.baseline:
        tags[f"{TAG}baseline_delta.{c.key}"] = _format(c.delta)
    return tags


def _write_version_tags(client: MlflowClient, model: str, version, tags: Mapping[str, str]) -> None:
    # A version decided again (another policy, a moved champion) must not keep a stale per-metric tag.
    stale = [k for k in (version.tags or {}) if k.startswith(TAG) and k not in tags]
    for key in stale:
        client.delete_model_version_tag(model, str(version.version), key)
    for key, value in tags.items():
        if (version.tags or {}).get(key) != value:
            client.set_model_version_tag(model, str(version.version), key, value)


def promote(
    model: str, policy: Policy, client: MlflowClient, *, version: str | int | None = None
) -> PromotionDecision:
    """Move the champion alias of `model` to the challenger version when it beats the champion.

    `version`: the version the caller evaluated; if the challenger alias holds another one, it is
    refused (a newer challenger must be evaluated itself). Refusals are returned, not raised.
    """
    if policy.model != model:
        raise PromotionError(f"{policy.source} is the policy of model {policy.model!r}, not of {model!r}")
    aliases = _alias_versions(client, model)
    names = policy.aliases
    challenger_v, champion_v = aliases.get(names.challenger), aliases.get(names.champion)
    expected = None if version is None else str(version)
    at = datetime.now(UTC).isoformat(timespec="seconds")
    common = dict(
        model=model,
        policy=policy.label,
        champion_alias=names.champion,
        challenger_alias=names.challenger,
        decided_at=at,
    )

    if expected is not None and champion_v == expected:
        reason = f"version {expected} already holds @{names.champion}: nothing to do"
        return PromotionDecision(
            decision="already_champion",
            reason=reason,
            challenger_version=expected,
            compared_to=None,
            champion_version=champion_v,
            **common,
        )
    if challenger_v is None:
        return PromotionDecision(
            decision="refused",
            reason=f"no version of {model!r} holds the alias @{names.challenger}: register one first",
            challenger_version=expected,
            compared_to=champion_v,
            champion_version=champion_v,
            **common,
        )
    if expected is not None and challenger_v != expected:
        reason = (
            f"@{names.challenger} has moved on: version {expected} was evaluated, but the alias now holds "
            f"version {challenger_v}; only an evaluated version is promoted (evaluate version {challenger_v})"
        )
        return PromotionDecision(
            decision="refused",
            reason=reason,
            challenger_version=expected,
            compared_to=champion_v,
            champion_version=champion_v,
            **common,
        )
    if champion_v == challenger_v:
        return PromotionDecision(
            decision="already_champion",
            reason=f"version {challenger_v} already holds @{names.champion}: nothing to do",
            challenger_version=challenger_v,
            compared_to=None,
            champion_version=champion_v,
            **common,
        )

    candidate = client.get_model_version(model, challenger_v)
    incumbent = client.get_model_version(model, champion_v) if champion_v is not None else None
    verdict = decide(
        policy,
        dict(candidate.tags or {}),
        None if incumbent is None else dict(incumbent.tags or {}),
        champion_label=f" (version {champion_v})" if champion_v else "",
    )
    decision: Decision = "promoted" if verdict.accepted else "refused"
    tags = _decision_tags(verdict, decision, champion_v, policy, at)
    _write_version_tags(client, model, candidate, tags)
    if verdict.accepted:
        client.set_registered_model_alias(model, names.champion, challenger_v)
        if incumbent is not None:
            client.set_model_version_tag(model, champion_v, f"{TAG}superseded_by", challenger_v)
            client.set_model_version_tag(model, champion_v, f"{TAG}superseded_at", at)
    client.set_registered_model_tag(model, f"{TAG}last_version", challenger_v)
    client.set_registered_model_tag(model, f"{TAG}last_decision", decision)
    return PromotionDecision(
        decision=decision,
        reason=verdict.reason,
        challenger_version=challenger_v,
        compared_to=champion_v,
        champion_version=challenger_v if verdict.accepted else champion_v,
        comparisons=verdict.comparisons,
        baseline=verdict.baseline,
        missing=verdict.missing,
        tags=tags,
        **common,
    )


# --------------------------------------------------------------------------- the promote stages


def registry_client(tracking_uri: str | None = None) -> MlflowClient:
    import mlflow

    from vidprior.registry import tracking

    uri = tracking_uri or tracking.tracking_uri()
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def run_stage(
    params: Params, inputs: Sequence[Path | str] | None, output_dir: Path, *, model: str
) -> dict[str, float]:
    """A promote stage: promote the version the evaluate stage evaluated (its `evaluation.json`).

    A refusal is an outcome, not an error: it is written to `promotion.json` and the `promoted` metric.
    """
    from vidprior.io.atomic import write_text_atomic
    from vidprior.unic.stage_inputs import input_dir

    started = time.perf_counter()
    evaluation_file = input_dir(inputs, 0, "evaluation") / "evaluation.json"
    if not evaluation_file.is_file():
        raise ValueError(f"{evaluation_file}: missing (expected the evaluate stage's evaluation.json)")
    evaluation = json.loads(evaluation_file.read_text(encoding="utf-8"))
    if evaluation.get("model") != model or not str(evaluation.get("version") or ""):
        raise ValueError(
            f"{evaluation_file}: expected model {model!r} and a version, got model "
            f"{evaluation.get('model')!r} version {evaluation.get('version')!r}"
        )
    policy = load_policy(policy_path(model, params.registry.policies_dir))
    decision = promote(model, policy, registry_client(), version=str(evaluation["version"]))
    record = {**decision.to_dict(), "evaluation": str(evaluation_file)}
    output_dir = Path(output_dir)
    write_text_atomic(output_dir / PROMOTION_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    counts = {o: sum(c.outcome == o for c in decision.comparisons) for o in ("improved", "regressed")}
    return {
        "promoted": float(decision.ok),
        # Versions and the comparison depend on the registry's history, not on the stage's inputs.
        "registry_champion_version": float(decision.champion_version or 0),
        "registry_metrics_improved": float(counts["improved"]),
        "registry_metrics_regressed": float(counts["regressed"]),
        "stage_seconds": round(time.perf_counter() - started, 4),
    }


def execute_for_component(
    stage_name: str,
    params_yaml: str,
    evaluation_path: str,
    output_path: str,
    metrics_artifact,
    *,
    policy_yaml: str = "",
    parent_run_id: str = "",
    mlflow_tracking_uri: str = "",
) -> dict[str, float]:
    """The promote component's body: `policy_yaml`, when given, replaces the image's policy file, so a
    pipeline can carry the policy it was compiled with."""
    import importlib
    import tempfile

    from vidprior import stages

    if stage_name not in PROMOTE_STAGES:
        raise ValueError(f"unknown promote stage {stage_name!r}; expected one of {list(PROMOTE_STAGES)}")
    if not policy_yaml:
        return stages.execute_for_component(
            stage_name,
            params_yaml,
            [evaluation_path],
            output_path,
            metrics_artifact,
            parent_run_id=parent_run_id,
            mlflow_tracking_uri=mlflow_tracking_uri,
        )
    model = importlib.import_module(PROMOTE_STAGES[stage_name]).MODEL_NAME
    policy_from_dict(yaml.safe_load(policy_yaml), "<policy_yaml>")  # fail before touching the registry
    with tempfile.TemporaryDirectory(prefix="policies_") as policies:
        (Path(policies) / f"{model}.yaml").write_text(policy_yaml, encoding="utf-8")
        data = yaml.safe_load(params_yaml)
        data.setdefault("registry", {})["policies_dir"] = policies
        return stages.execute_for_component(
            stage_name,
            yaml.safe_dump(data, sort_keys=False),
            [evaluation_path],
            output_path,
            metrics_artifact,
            parent_run_id=parent_run_id,
            mlflow_tracking_uri=mlflow_tracking_uri,
        )
