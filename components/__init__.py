"""Kubeflow Pipelines components: thin lightweight Python components around `vidprior.stages`.

One component per file, grouped by domain (`data/`, `register/`, ...). A component body only
imports `vidprior` and calls `vidprior.stages.execute` (or a `vidprior.registry` helper); every bit
of logic lives in the package, so a component runs exactly what `vidprior <domain> <stage>` runs.

`BASE_IMAGE` is the schema default of `images.base`; pipelines replace it per task with the image
named in their params (`task.set_container_image(params.images.base)`). The image ships `vidprior`
and its pinned `kfp`, so components never pip-install anything at start-up.
"""

from vidprior.config import ImagesParams

BASE_IMAGE = ImagesParams().base

__all__ = ["BASE_IMAGE"]
