"""Submit a pipeline to Kubeflow Pipelines: one run (`vidprior pipelines submit`) or a recurring run
for scheduled retraining (`vidprior pipelines schedule`).

The params a run uses travel as its `params_yaml` argument: the params files, overlaid by
`--set key=value` overrides, validated by the `Params` model before anything is sent, so a typo fails
here, naming the key, and not an hour into the run. A pipeline compiled here uses the same params for
its images and cluster placement; a precompiled package keeps those it was compiled with.

KFP's scheduler (robfig/cron) reads six cron fields, seconds first; `kfp_cron` accepts the usual five
(and the `@daily`-style macros) and converts them, and checks every field so a malformed expression
fails at submission rather than as a recurring run that never fires.
"""

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kfp import compiler
from kfp_server_api import ApiException

from pipelines import params_yaml_default
from vidprior.config import Params, ParamsError, _merge, _read_yaml, params_from_dict

# What a submission can fail with that deserves a message, not a traceback: bad input (ValueError,
# ParamsError and CronError included), an unreachable server (kfp.Client's healthz gives up with
# TimeoutError) and an HTTP error answer (kfp_server_api.ApiException: 401, 403, 404, ...).
KFP_ERRORS = (ValueError, TimeoutError, ApiException)

# Environment fallbacks of the connection options (the first is kfp.Client's own).
HOST_ENV = "KF_PIPELINES_ENDPOINT"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"


# --------------------------------------------------------------------------- params overrides


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (dotted key, YAML value): `unic.train.steps=100`, `a.b=[x, y]`, `a.c=null`."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParamsError(
            f"--set {text!r}: expected KEY=VALUE with a dotted params key, e.g. unic.train.steps=100"
        )
    if any(not part for part in key.split(".")):
        raise ParamsError(f"--set {text!r}: key {key!r} has an empty part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from None
    return key, value


def overrides_to_dict(overrides: Sequence[str]) -> dict[str, Any]:
    """Nested mapping of `--set` overrides (later ones win), ready to overlay on the params files."""
    tree: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        *parents, leaf = key.split(".")
        node = tree
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                taken = ".".join(parents[: depth + 1])
                raise ParamsError(f"--set {key}: {taken!r} was set to a value by an earlier --set")
            node = child
        node[leaf] = value
    return tree


def resolve_params(files: Sequence[Path | str], overrides: Sequence[str] = ()) -> Params:
    """The params files merged in order, then the overrides; validated (errors name key and source)."""
    names = [str(f) for f in files]
    if not names:
        raise ParamsError("no params file given")
    merged: dict[str, Any] = {}
    origin: dict[tuple, str] = {}
    for name in names:
        merged = _merge(merged, _read_yaml(Path(name)), origin, name)
    if overrides:
        for key in _leaf_paths(overrides_to_dict(overrides)):
            _check_overridable(merged, key)
        merged = _merge(merged, overrides_to_dict(overrides), origin, "--set")
    return params_from_dict(merged, origin=origin, files=[*names, *(["--set"] if overrides else [])])


def _leaf_paths(tree: dict, prefix: tuple = ()) -> list[tuple]:
    paths = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            paths.extend(_leaf_paths(value, (*prefix, key)))
        else:
            paths.append((*prefix, key))
    return paths


def _check_overridable(merged: dict, key: tuple) -> None:
    """An override may not descend into a value that is not a mapping (`seed.x=1` with `seed: 0`)."""
    node: Any = merged
    for depth, part in enumerate(key[:-1]):
        if not isinstance(node, dict) or part not in node:
            return  # a new section: the schema decides whether it exists
        node = node[part]
        if node is not None and not isinstance(node, dict):
            parent = ".".join(key[: depth + 1])
            raise ParamsError(
                f"--set {'.'.join(key)}: {parent!r} is a value ({node!r}), not a section with keys"
            )


# --------------------------------------------------------------------------- cron


class CronError(ValueError):
    """A cron expression KFP's scheduler would not accept."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] is value low + i
    question: bool = False  # '?' (no specific value) allowed


_SECOND = _Field("second", 0, 59)
_FIVE_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31, question=True),
    _Field("month", 1, 12, names=tuple("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())),
    _Field("day of week", 0, 6, names=tuple("SUN MON TUE WED THU FRI SAT".split()), question=True),
)
# robfig/cron's predefined schedules, as KFP's six fields.
_MACROS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_ITEM = re.compile(r"^(?P<base>[^/]+)(?:/(?P<step>.*))?$")


def kfp_cron(expression: str) -> str:
    """A cron expression as KFP's six fields (seconds first).

    Five fields (minute hour day-of-month month day-of-week) get "0 " prepended; six are checked and
    kept; `@daily`, `@weekly`, ... are expanded. Each field takes `*`, values, `a-b` ranges, `/step`
    and comma lists; month and day-of-week also take names (JAN-DEC, SUN-SAT), the day fields `?`.

    Raises:
        CronError: naming the field and what is wrong with it.
    """
    text = " ".join(expression.split())
    if not text:
        raise CronError("cron expression is empty")
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise CronError(f"cron {expression!r}: unknown macro; expected one of {', '.join(_MACROS)}")
        return _MACROS[text.lower()]
    fields = text.split(" ")
    if len(fields) == 5:
        layout, out = _FIVE_FIELDS, ["0", *fields]
    elif len(fields) == 6:
        layout, out = (_SECOND, *_FIVE_FIELDS), fields
    else:
        raise CronError(
            f"cron {expression!r}: expected 5 fields (minute hour day-of-month month day-of-week) or 6 "
            f"(second first, KFP's form), got {len(fields)}"
        )
    for spec, value in zip(layout, fields, strict=True):
        _check_field(spec, value, expression)
    return " ".join(out)


def _check_field(spec: _Field, text: str, expression: str) -> None:
    def fail(reason: str) -> CronError:
        return CronError(f"cron {expression!r}: {spec.name} field {text!r}: {reason}")

    for item in text.split(","):
        if not item:
            raise fail("empty list item")
        match = _ITEM.match(item)
        if not match:
            raise fail(f"cannot read {item!r}")
        base, step = match["base"], match["step"]
        if step is not None:
            if not step.isdigit() or int(step) < 1:
                raise fail(f"step {step!r} in {item!r} must be a whole number >= 1")
            if int(step) > spec.high - spec.low + 1:
                raise fail(f"step {step} in {item!r} exceeds the range {spec.low}-{spec.high}")
        if base in ("*", "?"):
            if base == "?" and not spec.question:
                raise fail("'?' is only allowed in the day-of-month and day-of-week fields")
            if base == "?" and step is not None:
                raise fail("'?' takes no step")
            continue
        low_text, dash, high_text = base.partition("-")
        low = _value(spec, low_text, fail)
        if dash:
            high = _value(spec, high_text, fail)
            if low > high:
                raise fail(f"range {base!r} runs backwards ({low} > {high})")


def _value(spec: _Field, text: str, fail) -> int:
    if text.isdigit():
        number = int(text)
        if not spec.low <= number <= spec.high:
            hint = " (use 0 for Sunday: KFP's scheduler reads 0-6)" if spec.name == "day of week" else ""
            raise fail(f"{number} is out of range {spec.low}-{spec.high}{hint}")
        return number
    if spec.names and text.upper() in spec.names:
        return spec.low + spec.names.index(text.upper())
    allowed = f"{spec.low}-{spec.high}" + (f" or {'/'.join(spec.names)}" if spec.names else "")
    raise fail(f"{text!r} is not a value ({allowed})")


# --------------------------------------------------------------------------- KFP


def connect(host: str | None = None, namespace: str | None = None, token: str | None = None):
    """A `kfp.Client` for `host` (else $KF_PIPELINES_ENDPOINT).

    Authentication: `token` (else $KF_PIPELINES_TOKEN) as a bearer token; otherwise, inside a pod,
    the projected service-account token (kfp's ServiceAccountTokenVolumeCredentials, path from
    $KF_PIPELINES_SA_TOKEN_PATH); otherwise none (a port-forward).
    """
    import kfp
    from kfp import client as kfp_client
    from kfp.client import set_volume_credentials

    host = host or os.environ.get(HOST_ENV)
    if not host:
        raise ValueError(f"no KFP host: pass --host or set {HOST_ENV} (e.g. http://127.0.0.1:8888)")
    token = token or os.environ.get(TOKEN_ENV) or None
    credentials = None
    if not token:
        sa_path = (
            os.environ.get(kfp_client.KF_PIPELINES_SA_TOKEN_ENV) or kfp_client.KF_PIPELINES_SA_TOKEN_PATH
        )
        if Path(sa_path).is_file():
            credentials = set_volume_credentials.ServiceAccountTokenVolumeCredentials(sa_path)
    namespace = namespace or os.environ.get(NAMESPACE_ENV) or "kubeflow"
    return kfp.Client(host=host, namespace=namespace, existing_token=token, credentials=credentials)


def compile_package(pipeline: str, params: Params, output: Path) -> Path:
    """Compiles pipeline `pipeline` (a `pipelines.compile.PIPELINES` name) with `params` to `output`."""
    from pipelines.compile import PIPELINES

    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; expected one of {', '.join(PIPELINES)}")
    compiler.Compiler().compile(pipeline_func=PIPELINES[pipeline](params), package_path=str(output))
    return output


def run_arguments(package: Path, params: Params, mlflow_tracking_uri: str | None) -> dict[str, str]:
    """The run's arguments: `params_yaml` (and the tracking URI); the package must declare them."""
    spec = next(yaml.safe_load_all(Path(package).read_text()), None) or {}  # the platform spec may follow
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    arguments = {"params_yaml": params_yaml_default(params)}
    if mlflow_tracking_uri:
        arguments["mlflow_tracking_uri"] = mlflow_tracking_uri
    missing = sorted(set(arguments) - set(declared))
    if missing:
        raise ValueError(
            f"{package}: the pipeline has no input {', '.join(missing)} (not a vidprior pipeline?)"
        )
    return arguments


@dataclass
class Submission:
    pipeline: str
    params: Params
    package: Path | None = None  # None: compile `pipeline` with `params`
    experiment: str | None = None  # None: params.tracking.experiment
    name: str | None = None
    mlflow_tracking_uri: str | None = None
    service_account: str | None = None

    def __post_init__(self):
        from pipelines.compile import PIPELINES

        if self.pipeline not in PIPELINES:
            raise ValueError(f"unknown pipeline {self.pipeline!r}; expected one of {', '.join(PIPELINES)}")

    def display_name(self) -> str:
        return self.name or f"vidprior-{self.pipeline} {self.params.profile} {self.params.digest()}"

    def experiment_name(self) -> str:
        return self.experiment or self.params.tracking.experiment


def _with_package(submission: Submission, action):
    if submission.package is not None:
        return action(Path(submission.package))
    with tempfile.TemporaryDirectory(prefix="vidprior-kfp-") as tmp:
        return action(compile_package(submission.pipeline, submission.params, Path(tmp) / "pipeline.yaml"))


def submit_run(client, submission: Submission) -> str:
    """Creates one run of the pipeline; returns the run id."""

    def create(package: Path) -> str:
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=run_arguments(package, submission.params, submission.mlflow_tracking_uri),
            run_name=submission.display_name(),
            experiment_name=submission.experiment_name(),
            namespace=client.get_user_namespace() or None,
            service_account=submission.service_account,
        )
        return result.run_id

    return _with_package(submission, create)


def schedule_run(client, submission: Submission, cron: str) -> str:
    """Creates an enabled recurring run (scheduled retraining); returns its id.

    One run at a time (`max_concurrency` 1: a retraining never overlaps the previous one) and no
    catch-up (a paused schedule, re-enabled, starts one run, not one per missed slot).
    """
    cron_expression = kfp_cron(cron)

    def create(package: Path) -> str:
        experiment = client.create_experiment(
            name=submission.experiment_name(), namespace=client.get_user_namespace() or None
        )
        recurring = client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=submission.display_name(),
            description=f"Scheduled retraining: vidprior-{submission.pipeline}, cron '{cron_expression}'",
            cron_expression=cron_expression,
            max_concurrency=1,
            no_catchup=True,
            params=run_arguments(package, submission.params, submission.mlflow_tracking_uri),
            pipeline_package_path=str(package),
            enabled=True,
            service_account=submission.service_account,
        )
        return recurring.recurring_run_id

    return _with_package(submission, create)
