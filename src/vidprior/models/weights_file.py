"""Single weight files (a head's or a non-transformers model's state dict): a local path or a hub file.

`spec.pretrained` is either an existing local file, or `<owner>/<repo>/<path in the repo>` of a
Hugging Face hub repository (revision from `spec.revision`). A hub file is taken from the HF cache when
it is there and downloaded only if the hub answers at once, so an offline job fails with a
`ModelUnavailableError` naming the file instead of hanging.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError

from vidprior.models.loading import (
    ModelUnavailableError,
    hub_cache_dir,
    hub_endpoint,
    hub_offline,
    hub_reachable,
)
from vidprior.models.spec import ModelSpec


def _unavailable(spec: ModelSpec, why: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"weights file {spec.pretrained!r} (revision {spec.revision or 'main'!r}) is unavailable: {why}. "
        f"Fix: set `pretrained:` to a local file (.safetensors, .pth, .pt or .bin), or to "
        f"<owner>/<repo>/<file> of a hub repository pre-downloaded into the HF cache this job uses "
        f"(HF_HOME / HF_HUB_CACHE, now {hub_cache_dir()!r}), e.g. `hf download <owner>/<repo> <file>`."
    )


def resolve_weights_file(spec: ModelSpec) -> Path:
    """The local path of `spec.pretrained`'s weight file, downloading a hub file only when the hub answers."""
    if spec.pretrained is None:
        raise ValueError("resolve_weights_file needs a spec with 'pretrained' set")
    local = Path(spec.pretrained).expanduser()
    if local.is_file():
        return local
    parts = spec.pretrained.strip("/").split("/")
    if local.exists() or len(parts) < 3:
        raise _unavailable(spec, "not an existing local file, nor <owner>/<repo>/<file> of a hub repository")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    cache_dir = hub_cache_dir()
    try:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=spec.revision)
    except HFValidationError as e:
        raise _unavailable(spec, f"{repo_id!r} is not a valid hub repository id") from e
    if isinstance(cached, str):
        return Path(cached)
    if hub_offline():
        raise _unavailable(spec, "not in the HF cache and HF_HUB_OFFLINE is set")
    if not hub_reachable():
        raise _unavailable(spec, f"not in the HF cache and the hub {hub_endpoint()} is unreachable")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=spec.revision, cache_dir=cache_dir))
    except OSError as e:  # huggingface_hub HTTP errors are OSErrors too
        raise _unavailable(spec, f"download failed ({e})") from e


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a torch pickle (loaded with weights_only: no code runs).

    A checkpoint that nests its weights under "params" / "state_dict" (pyiqa, Lightning) is unwrapped,
    and a DataParallel "module." prefix dropped.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("params", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}
