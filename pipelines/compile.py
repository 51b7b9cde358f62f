"""Compile every pipeline to KFP IR YAML (`vidprior pipelines compile`)."""

from collections.abc import Callable
from pathlib import Path

from kfp import compiler
from kfp.dsl import graph_component

from pipelines.udpdiff import build_udpdiff_pipeline
from pipelines.unic import build_unic_pipeline
from vidprior.config import Params

# File stem -> pipeline factory. A new pipeline is one more entry.
PIPELINES: dict[str, Callable[[Params], graph_component.GraphComponent]] = {
    "unic": build_unic_pipeline,
    "udpdiff": build_udpdiff_pipeline,
}


def compile_all(params: Params, output_dir: Path) -> list[Path]:
    """Compiles every pipeline in `PIPELINES` to `<output_dir>/<name>.yaml`.

    Args:
        params: Resolved params; their values become the pipelines' defaults and images.
        output_dir: Directory for the compiled YAML files (created when missing).

    Returns:
        The written files, in `PIPELINES` order.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in PIPELINES.items():
        path = output_dir / f"{name}.yaml"
        compiler.Compiler().compile(pipeline_func=build(params), package_path=str(path))
        written.append(path)
    return written
