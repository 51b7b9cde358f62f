"""DeepSpeed set-up shared by the training stages: config, process group, engine, checkpoints.

One process (`python ...`) and a `torchrun --nproc_per_node N` launch run the same code:

- `session()` wraps a training: `init_distributed` joins the torchrun group (env://) or, with no
  launcher, makes a world of one from an in-memory store (no port to collide on), gloo on CPU and
  nccl on CUDA; and LOCAL_RANK, which DeepSpeed reads from the environment, is set while it runs.
  The group is made once per process and kept: DeepSpeed caches process groups, so destroying and
  re-making it in one process breaks the next engine. `shutdown` is for the end of a worker process.
- `deepspeed_config` turns params into DeepSpeed's dict: micro-batch, accumulation, ZeRO stage (0-3)
  with optional ZeRO-Offload of the optimizer states (stage >= 1) and of the parameters (stage 3) to
  CPU memory, bf16 only where the precision resolves to it ("auto": bf16 on CUDA, fp32 on CPU),
  torch's AdamW (`torch_adam`: FusedAdam would need a CUDA build and does not exist on CPU; with
  offload it steps the fp32 states where they live, in CPU memory) and gradient clipping.
- `initialize` wraps only the trainable module (a head; frozen encoders stay outside the engine).
- `save_checkpoint` / `load_latest`: DeepSpeed writes each checkpoint into its own tag folder; the
  `latest` pointer is written here, atomically, only after every rank has finished writing and the
  files are fsynced. DeepSpeed's own `latest` (save_latest=True) is not used: rank 0 writes it as soon
  as *its* files are done, before the closing barrier, so under ZeRO another rank may still be
  writing its optimizer shard, and it truncates the file in place, so a kill at the wrong moment
  leaves an empty pointer. A kill at any point therefore leaves `latest` naming a complete checkpoint.

DeepSpeed is imported lazily (`_deepspeed()`), after `DS_ACCELERATOR` is set, so importing this module
stays cheap and DeepSpeed does not print its "could not detect an accelerator" warning on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vidprior.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

LATEST = "latest"
FINGERPRINT = "fingerprint.json"
TAG_PREFIX = "global_step"
_TAG = re.compile(rf"^{TAG_PREFIX}(\d+)$")
# Keys a launcher (torchrun, deepspeed, mpirun mapped by DeepSpeed) sets for an env:// rendezvous.
_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = timedelta(minutes=30)


# --------------------------------------------------------------------------- precision and config


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str | None = None) -> str:
    """'fp32' or 'bf16'; 'auto' is bf16 on CUDA and fp32 on CPU."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if (device or device_type()) == "cuda" else "fp32"


def deepspeed_config(
    *,
    lr: float,
    micro_batch: int,
    grad_accum: int = 1,
    zero_stage: int = 0,
    precision: str = "auto",
    device: str | None = None,
    gradient_clipping: float = 1.0,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> dict[str, Any]:
    """DeepSpeed's config dict. The global batch is micro_batch * grad_accum * world size; DeepSpeed
    derives `train_batch_size` from the world size it finds, so it is not fixed here.

    `offload_optimizer` keeps the fp32 master weights and Adam states in CPU memory (ZeRO-Offload,
    ZeRO stage 1-3); `offload_params` also keeps the parameters there between uses (ZeRO-3 only).
    """
    resolved = resolve_precision(precision, device)
    zero_stage = int(zero_stage)
    if not 0 <= zero_stage <= 3:
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    if offload_optimizer and zero_stage == 0:
        raise ValueError("offload_optimizer needs ZeRO stage >= 1 (ZeRO-Offload partitions the optimizer)")
    if offload_params and zero_stage != 3:
        raise ValueError(
            f"offload_params needs ZeRO stage 3 (the one that partitions parameters), not {zero_stage}"
        )
    zero: dict[str, Any] = {"stage": zero_stage}
    # Pinned host memory speeds up the copies to and from a GPU; on CPU there is nothing to copy to.
    pin = (device or device_type()) == "cuda"
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    return {
        "train_micro_batch_size_per_gpu": int(micro_batch),
        "gradient_accumulation_steps": int(grad_accum),
        "zero_optimization": zero,
        "bf16": {"enabled": resolved == "bf16"},
        "fp16": {"enabled": False},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": float(lr),
                "betas": list(betas),
                "eps": float(eps),
                "weight_decay": float(weight_decay),
                # torch.optim.AdamW: no JIT-compiled FusedAdam (needs nvcc; none on CPU).
                "torch_adam": True,
            },
        },
        "gradient_clipping": float(gradient_clipping),
        "steps_per_print": 2**31 - 1,  # the stage logs its own loss
        "wall_clock_breakdown": False,
    }


def config_from_params(train: Any, device: str | None = None, **overrides: Any) -> dict[str, Any]:
    """`deepspeed_config` from a params section with `lr` and, where it has them, micro_batch,
    grad_accum, zero_stage, precision, offload_optimizer and offload_params (absent ones take the
    defaults)."""
    keys = dict(
        lr=train.lr,
        micro_batch=getattr(train, "micro_batch", 1),
        grad_accum=getattr(train, "grad_accum", 1),
        zero_stage=getattr(train, "zero_stage", 0),
        precision=getattr(train, "precision", "auto"),
        offload_optimizer=getattr(train, "offload_optimizer", False),
        offload_params=getattr(train, "offload_params", False),
    )
    return deepspeed_config(**{**keys, **overrides}, device=device)


# --------------------------------------------------------------------------- DeepSpeed import


def _deepspeed():
    """Import DeepSpeed with the accelerator named up front (no auto-detection warning on CPU)."""
    os.environ.setdefault("DS_ACCELERATOR", device_type())
    import deepspeed
    import deepspeed.ops

    if logging.getLogger("DeepSpeed").level in (logging.NOTSET, logging.INFO):
        deepspeed.utils.logger.setLevel(logging.WARNING)
    # DeepSpeed's TorchBackend JIT-compiles a shared-memory all-reduce kernel (with g++, ~60 s on two
    # cores the first time on a machine) when it is "compatible". Only inference all-reduce uses it;
    # training reduces through the process group. DeepSpeed caches its probe of the ops in a module
    # dict whose edits persist (deepspeed/ops/__init__.py), so mark the op unavailable there.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # ZeRO-3 calls these collectives every step, and torch warns about their names at every call.
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
        category=FutureWarning,
    )
    return deepspeed


# --------------------------------------------------------------------------- process group


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    launched: bool  # True under torchrun (env:// rendezvous); False for a world of one made here


_INFO: DistInfo | None = None
_CREATED = False


def _launched() -> bool:
    return all(key in os.environ for key in _LAUNCHER_ENV)


def init_distributed(timeout: timedelta = DEFAULT_TIMEOUT) -> DistInfo:
    """Join (or make) the process group; idempotent. Returns rank, world size and this rank's device."""
    global _INFO, _CREATED
    launched = _launched()
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if launched else 0
    kind = device_type()
    backend = "nccl" if kind == "cuda" else "gloo"
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        if launched:
            dist.init_process_group(backend, timeout=timeout)
        else:
            # A world of one without a launcher: an in-process store, so no TCP port is needed and two
            # single-process runs side by side never collide.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        _CREATED = True
    _INFO = DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=dist.get_backend(),
        launched=launched,
    )
    return _INFO


@contextlib.contextmanager
def session(timeout: timedelta = DEFAULT_TIMEOUT) -> Iterator[DistInfo]:
    """`init_distributed`, with LOCAL_RANK set while the block runs: DeepSpeed reads it from the
    environment at engine set-up and, under ZeRO-3, at every step, even in a world of one where no
    launcher set it. It is removed again on exit, so child processes started later (and libraries
    such as accelerate, which read it as "launched by torchrun") do not inherit it."""
    dist_info = init_distributed(timeout)
    added = "LOCAL_RANK" not in os.environ
    if added:
        os.environ["LOCAL_RANK"] = str(dist_info.local_rank)
    try:
        yield dist_info
    finally:
        if added:
            os.environ.pop("LOCAL_RANK", None)


def info() -> DistInfo:
    return _INFO if _INFO is not None else init_distributed()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(value: float | torch.Tensor, device: torch.device | None = None) -> float:
    """Mean of a scalar over the ranks (float64, so the mean does not depend on the rank order much)."""
    tensor = torch.as_tensor(value, dtype=torch.float64).reshape(()).to(device or info().device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
        tensor = tensor / dist.get_world_size()
    return float(tensor.item())


def all_reduce_sum(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sums of a few scalars over the ranks, in one collective (float64)."""
    tensor = torch.as_tensor(list(values), dtype=torch.float64).reshape(-1).to(device or info().device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown() -> None:
    """Destroy the process group if this module made it: for the end of a launcher's worker process.

    Not for use between two trainings in one process (DeepSpeed keeps references to the old group).
    """
    global _INFO, _CREATED
    if _CREATED and dist.is_initialized():
        dist.destroy_process_group()
    _INFO, _CREATED = None, False


# --------------------------------------------------------------------------- engine


def initialize(module: torch.nn.Module, config: Mapping[str, Any]):
    """`deepspeed.initialize` on the trainable `module` only; returns the engine (module on its device).

    DeepSpeed casts the module to bf16 when the config enables it and keeps fp32 master weights in the
    optimizer; `full_fp32_state_dict` gets them back.
    """
    info()
    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError("DeepSpeed needs LOCAL_RANK: build and use the engine inside `session()`")
    deepspeed = _deepspeed()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("initialize: the module has no trainable parameters")
    engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=params, config=dict(config))
    return engine


def compute_dtype(engine) -> torch.dtype:
    """The dtype the wrapped module's inputs should have."""
    return torch.bfloat16 if engine.bfloat16_enabled() else torch.float32


def full_fp32_state_dict(engine) -> dict[str, torch.Tensor]:
    """The module's full fp32 weights on CPU: ZeRO/bf16 master copies where DeepSpeed keeps them.

    Collective under ZeRO (gathers partitions): every rank must call it.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    optimizer = engine.optimizer
    masters: dict[int, torch.Tensor] = {}
    # bf16 without ZeRO (FP16_UnfusedOptimizer): fp32 masters, group by group, next to the bf16 params.
    low, high = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if low is not None and high is not None:
        for group_low, group_high in zip(low, high, strict=False):
            if isinstance(group_low, list | tuple) and isinstance(group_high, list | tuple):
                for p_low, p_high in zip(group_low, group_high, strict=False):
                    if p_low.shape == p_high.shape:
                        masters[id(p_low)] = p_high
    state: dict[str, torch.Tensor] = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)
        if full is None:
            full = masters.get(id(param), param)
        state[name] = full.detach().float().cpu().clone()
    for name, buffer in engine.module.named_buffers():
        state[name] = buffer.detach().cpu().clone()
    return state


# --------------------------------------------------------------------------- checkpoints


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{int(step)}"


def step_of(tag: str) -> int | None:
    match = _TAG.match(tag.strip())
    return int(match[1]) if match else None


def latest_step(ckpt_dir: Path) -> int | None:
    """The step the `latest` pointer names, or None (no pointer, unreadable, or its folder is gone)."""
    pointer = Path(ckpt_dir) / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text(encoding="utf-8").strip()
    step = step_of(tag)
    if step is None or not (Path(ckpt_dir) / tag).is_dir():
        return None
    return step


def prepare_checkpoint_dir(
    ckpt_dir: Path, fingerprint: Mapping[str, Any], max_step: int | None = None
) -> None:
    """Make `ckpt_dir` hold only checkpoints of this configuration (collective).

    Rank 0 deletes checkpoints written for another fingerprint (other data, params or world size),
    or a `latest` beyond `max_step` (a run asked for fewer steps than were already done), and records
    the fingerprint; the other ranks wait for it.
    """
    ckpt_dir = Path(ckpt_dir)
    if is_main():
        stamp = ckpt_dir / FINGERPRINT
        canonical = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        recorded = json.loads(stamp.read_text(encoding="utf-8")) if stamp.is_file() else None
        step = latest_step(ckpt_dir)
        stale = ckpt_dir.exists() and recorded != canonical
        beyond = step is not None and max_step is not None and step > max_step
        if stale or beyond:
            why = "another configuration" if stale else f"step {step} > the {max_step} steps asked for"
            log.warning("discarding checkpoints in %s (%s)", ckpt_dir, why)
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(stamp, json.dumps(canonical, sort_keys=True, indent=1))
        _prune(ckpt_dir, keep_last=None)  # abandoned folders of saves a kill interrupted
    barrier()


def _fsync_tree(path: Path) -> None:
    for item in sorted(path.rglob("*")):
        if item.is_file():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
    for folder in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_latest(ckpt_dir: Path, tag: str) -> None:
    """Point `latest` at `tag`: fsync + rename, so the pointer is the old tag or the new one, never torn."""
    write_text_atomic(Path(ckpt_dir) / LATEST, tag)


def _prune(ckpt_dir: Path, keep_last: int | None) -> None:
    """Delete tag folders other than `latest` and the `keep_last - 1` before it (rank 0 only).

    Folders newer than `latest` are saves that never completed; they always go. keep_last=None keeps
    every complete checkpoint and only removes those.
    """
    current = latest_step(ckpt_dir)
    tags = sorted(
        (step, p) for p in Path(ckpt_dir).iterdir() if p.is_dir() and (step := step_of(p.name)) is not None
    )
    complete = [(s, p) for s, p in tags if current is not None and s <= current]
    doomed = [p for s, p in tags if current is None or s > current]
    if keep_last is not None:
        doomed += [p for _, p in complete[: max(0, len(complete) - keep_last)]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(
    engine, ckpt_dir: Path, step: int, client_state: Mapping[str, Any] | None = None, keep_last: int = 2
) -> Path:
    """Save a checkpoint of `engine` at `step` (collective); `latest` moves only once it is complete."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    state = {"vidprior": dict(client_state or {}), "vidprior_step": int(step)}
    # DeepSpeed ends with a barrier, so every rank's files are written when it returns.
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state, save_latest=False)
    if is_main():
        _fsync_tree(ckpt_dir / tag)
        _write_latest(ckpt_dir, tag)
        _prune(ckpt_dir, keep_last)
    barrier()
    return ckpt_dir / tag


def load_latest(engine, ckpt_dir: Path) -> tuple[int, dict[str, Any] | None]:
    """Load the checkpoint `latest` names into `engine` (collective). (step, client state) or (0, None)."""
    ckpt_dir = Path(ckpt_dir)
    step = broadcast_object(latest_step(ckpt_dir) if is_main() else None)
    if step is None:
        return 0, None
    path, client = engine.load_checkpoint(
        str(ckpt_dir), tag=tag_for(step), load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None or client is None:
        raise RuntimeError(f"{ckpt_dir / tag_for(step)}: DeepSpeed could not load this checkpoint")
    if int(client.get("vidprior_step", -1)) != step:
        raise RuntimeError(
            f"{ckpt_dir / tag_for(step)}: checkpoint records step {client.get('vidprior_step')}"
        )
    return step, dict(client.get("vidprior", {}))
