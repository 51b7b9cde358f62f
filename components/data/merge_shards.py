"""Component `merge_shards`: joins the shard outputs of a fanned-out generation stage."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def merge_shards(shards: Input[list[Dataset]], output: Output[Dataset]) -> int:
    """Joins shard outputs (from `dsl.Collected` over a `dsl.ParallelFor`) into one output.

    Manifests and rejects are concatenated; an id produced by two shards fails the task. The media
    each manifest names are linked (or copied) in, so the result reads like a one-shard output.

    Args:
        shards: The shard outputs.
        output: Receives the merged `manifest.parquet`, `rejects.parquet` and media.

    Returns:
        The number of items in the merged manifest.
    """
    from pathlib import Path

    from vidprior.io.shards import merge_shards as merge

    return merge([Path(shard.path) for shard in shards], Path(output.path))["items"]
