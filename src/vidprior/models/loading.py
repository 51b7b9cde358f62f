"""Offline-aware `from_pretrained`: cache hits load without network; misses without network fail at once."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError

from vidprior.models.spec import ModelSpec, TextEmbedderSpec

CONNECT_TIMEOUT_S = 3.0
DEVICE_ENV = "VIDPRIOR_DEVICE"  # "cpu", "cuda", "cuda:1"...; default: cuda when available, else cpu
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelUnavailableError(RuntimeError):
    """A pretrained component is neither in a local directory, nor in the HF cache, nor downloadable now."""


def default_device() -> str:
    """Where a loaded model runs (registered models, sampling): `VIDPRIOR_DEVICE`, else cuda if present."""
    return os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")


def torch_dtype(spec: ModelSpec | TextEmbedderSpec) -> torch.dtype:
    return _DTYPES[spec.dtype]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random init under a fixed seed without disturbing the caller's global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def finish_tiny(module: torch.nn.Module, spec: ModelSpec | TextEmbedderSpec) -> torch.nn.Module:
    """Cast a freshly built tiny module to the spec dtype and put it in eval mode, as from_pretrained does."""
    if spec.dtype != "float32":  # skipping the no-op cast also skips a noisy diffusers warning
        module = module.to(torch_dtype(spec))
    return module.eval()


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    # huggingface_hub freezes its constants at import; the env is re-read so a later export still counts.
    return hf_constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_endpoint() -> str:
    """The endpoint downloads really go to (huggingface_hub reads HF_ENDPOINT once, at import)."""
    return hf_constants.ENDPOINT


def hub_cache_dir() -> str:
    # Re-read at call time for the same reason as `hub_offline`; passed explicitly to every loader.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return hf_constants.HF_HUB_CACHE


def hub_reachable(endpoint: str | None = None, timeout: float | None = None) -> bool:
    """One HEAD request to the endpoint, no retries: any HTTP answer means the hub can be talked to.

    A bare TCP connect is not enough: sandboxes with transparent egress proxies accept a connect to any
    address, and huggingface_hub then spends ~25 s in its retry loop. urllib honours the *_PROXY variables.
    """
    request = urllib.request.Request(endpoint or hub_endpoint(), method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout or CONNECT_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, TLS failure, timeout, refused; ValueError: malformed URL
        return False


def _marker_file(cls: type) -> str:
    """A file every saved component of this class has: present in the cache means the component was fetched.

    Needed because transformers 5 tokenizers silently build a near-empty default vocabulary when no file is
    found, instead of raising.
    """
    from transformers import PreTrainedTokenizerBase
    from transformers.image_processing_utils import ImageProcessingMixin

    if issubclass(cls, PreTrainedTokenizerBase):
        return "tokenizer_config.json"
    if issubclass(cls, ImageProcessingMixin):
        return "preprocessor_config.json"
    name = getattr(cls, "config_name", None)  # diffusers ConfigMixin: config.json / scheduler_config.json
    return name if isinstance(name, str) else "config.json"


def _unavailable(
    spec: ModelSpec | TextEmbedderSpec, subfolder: str | None, why: str
) -> ModelUnavailableError:
    component = subfolder or "<repository root>"
    rev = spec.revision or "main"
    return ModelUnavailableError(
        f"pretrained model {spec.pretrained!r} (revision {rev!r}, component {component!r}) is unavailable: "
        f"{why}. Fix: pre-download it where the hub is reachable into the HF cache this job uses "
        f"(HF_HOME / HF_HUB_CACHE, now {hub_cache_dir()!r}), e.g. `HF_HOME=... hf download {spec.pretrained} "
        f"--revision {rev}`, or set `pretrained:` to a local directory saved with save_pretrained "
        f"(with a {component!r} subfolder)."
    )


def load_pretrained(
    cls: type, spec: ModelSpec | TextEmbedderSpec, subfolder: str | None = None, **kwargs: Any
) -> Any:
    """`cls.from_pretrained` for one component of `spec.pretrained`, never hanging when offline.

    A local directory loads directly; a hub id loads from the cache when the component is there, and is
    downloaded only if the hub answers one HEAD request within a few seconds.
    """
    if spec.pretrained is None:
        raise ValueError("load_pretrained needs a spec with 'pretrained' set")
    if issubclass(cls, torch.nn.Module):
        kwargs.setdefault("dtype", torch_dtype(spec))  # diffusers and transformers 5 both accept `dtype`
    if subfolder:
        kwargs["subfolder"] = subfolder
    marker = _marker_file(cls)

    local = Path(spec.pretrained).expanduser()
    if local.is_dir():
        if not (local / (subfolder or "") / marker).is_file():
            raise _unavailable(spec, subfolder, f"local directory {str(local)!r} has no {marker}")
        return cls.from_pretrained(str(local), **kwargs)

    cache_dir = hub_cache_dir()
    kwargs.update(revision=spec.revision, cache_dir=cache_dir)
    marker_path = f"{subfolder}/{marker}" if subfolder else marker
    try:
        cached = try_to_load_from_cache(
            spec.pretrained, marker_path, cache_dir=cache_dir, revision=spec.revision
        )
    except HFValidationError as e:
        raise _unavailable(spec, subfolder, "neither an existing local directory nor a valid hub id") from e
    cache_error: Exception | None = None
    if isinstance(cached, str):
        try:
            return cls.from_pretrained(spec.pretrained, local_files_only=True, **kwargs)
        except (OSError, ValueError) as e:  # partially cached (e.g. config but no weights): try the hub
            cache_error = e

    if hub_offline():
        raise _unavailable(spec, subfolder, "not in the HF cache and HF_HUB_OFFLINE is set") from cache_error
    if not hub_reachable():
        raise _unavailable(
            spec, subfolder, f"not in the HF cache and the hub {hub_endpoint()} is unreachable"
        ) from cache_error
    try:
        loaded = cls.from_pretrained(spec.pretrained, **kwargs)
    except OSError as e:  # huggingface_hub HTTP errors are OSErrors too
        raise _unavailable(spec, subfolder, f"download failed ({e})") from e
    fetched = try_to_load_from_cache(
        spec.pretrained, marker_path, cache_dir=cache_dir, revision=spec.revision
    )
    if not isinstance(fetched, str):
        raise _unavailable(spec, subfolder, f"the repository has no {marker_path}")
    return loaded
