"""Kubeflow pipelines: wiring of the components in `components/`, built from params.

Each pipeline module has a factory `build_<name>_pipeline(params)` so that the default params
(embedded as the `params_yaml` argument's default) and the container image come from the params
files, never from the code. `pipelines.compile.compile_all` compiles them all to KFP IR YAML.
"""

from pathlib import Path

import yaml

from vidprior.config import Params

REPO_ROOT = Path(__file__).resolve().parents[1]


class _OneLineDumper(yaml.SafeDumper):
    """Flow-style YAML on one line; strings with line breaks are double-quoted with escapes."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if ("\n" in value or "\r" in value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_OneLineDumper.add_representer(str, _represent_str)


def params_yaml_default(params: Params) -> str:
    """The resolved params as one-line (flow-style) YAML, for a pipeline's `params_yaml` default.

    kfp 2.17's compiler copies string defaults verbatim into the `# Inputs:` comment at the top of
    the compiled file; a multi-line default (block YAML) leaves its later lines uncommented and
    the compiled file no longer parses. One line avoids that; components read it with
    `yaml.safe_load` like any params YAML.
    """
    text = yaml.dump(
        params.model_dump(mode="json"),
        Dumper=_OneLineDumper,
        default_flow_style=True,
        sort_keys=False,
        width=float("inf"),
    ).strip()
    if "\n" in text:  # pragma: no cover - the dumper above never breaks lines
        raise ValueError("params do not fit on one YAML line")
    return text


def policy_yaml(params: Params, model: str) -> str:
    """The promotion policy of `model` (`<registry.policies_dir>/<model>.yaml`) as text, embedded in
    the compiled pipeline: a run promotes by the policy it was compiled with, whatever the image holds.

    A relative `policies_dir` is read from this checkout (pipelines are compiled from the repository,
    which holds `mlflow/policies/`), not from VIDPRIOR_HOME, which names where stages keep their data.
    """
    from vidprior.registry.promote import load_policy

    directory = Path(params.registry.policies_dir)
    path = (directory if directory.is_absolute() else REPO_ROOT / directory) / f"{model}.yaml"
    load_policy(path)  # a broken policy fails the compile, not a run hours later
    return path.read_text(encoding="utf-8")
