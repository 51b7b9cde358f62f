"""Kubeflow pipelines: wiring of the components in `components/`, built from params.

Each pipeline module has a factory `build_<name>_pipeline(params)` so that the default params
(embedded as the `params_yaml` argument's default) and the container image come from the params
files, never from the code. `pipelines.compile.compile_all` compiles them all to KFP IR YAML.
"""

import yaml

from vidprior.config import Params


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
