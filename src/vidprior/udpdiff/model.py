"""UDPDiff's transformer (Sec. 3.3-3.4): CogVideoX widened to a 32-channel latent plus a task embedding.

The latent is the channel concatenation [video latent | dense latent] (16 + 16 channels for CogVideoX).
`widen_from_base` copies every pretrained weight and builds the wider patch embedding and output
projection from the pretrained 16-channel ones:

- "duplicate" (the paper): the input projection sees [W | W], the output projection emits W twice
  (bias included). With a zero dense half and a zero task embedding, each output half then equals the
  base model's output; for any other input the copies are not an identity, as the paper notes.
- "random" (its ablation): the pretrained weights serve the video half; the new half is drawn as
  PyTorch's default layer init draws it.

Both CogVideoX 1.0 (Conv2d patch embedding) and 1.5 (Linear over a temporal patch) lay a patch out
channel-major, (C, [p_t,] p, p), in the input and in the output projection; widening therefore works on
a (.., C, patch) view of either.

The task embedding (segmentation 0, depth 1) is added to the timestep embedding and starts at zero, so
fine-tuning begins from the duplicated model's behaviour for both tasks.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from diffusers import CogVideoXTransformer3DModel
from torch import nn

TASKS: Mapping[str, int] = {"segmentation": 0, "depth": 1}
DenseInit = Literal["duplicate", "random"]
# Config entries diffusers adds on save; they are not constructor arguments.
_PRIVATE_CONFIG_PREFIX = "_"


def task_id(task: str) -> int:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


class UDPDiffTransformer3DModel(CogVideoXTransformer3DModel):
    """`CogVideoXTransformer3DModel` whose forward also takes `task_id` ([B] or scalar ints).

    `in_channels`/`out_channels` are the widened counts (2x the base model's); `num_tasks` is saved in
    the config, so `save_pretrained` / `from_pretrained` round-trip the whole model.
    """

    def __init__(self, num_tasks: int = len(TASKS), **cogvideox_config: Any):
        super().__init__(**cogvideox_config)
        self.task_embedding = nn.Embedding(num_tasks, self.config.time_embed_dim)
        nn.init.zeros_(self.task_embedding.weight)
        self.register_to_config(num_tasks=num_tasks)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: int | float | torch.Tensor,
        task_id: int | torch.Tensor,
        **kwargs: Any,
    ):
        task_emb = self.task_embedding(self._task_ids(task_id, hidden_states))

        # The parent computes the timestep embedding inside its forward; a hook adds the task embedding
        # to that output for this call only, so the parent's forward (and its gradient checkpointing)
        # is reused unchanged.
        def add_task(_module, _args, timestep_emb):
            return timestep_emb + task_emb.to(timestep_emb.dtype)

        handle = self.time_embedding.register_forward_hook(add_task)
        try:
            return super().forward(hidden_states, encoder_hidden_states, timestep, **kwargs)
        finally:
            handle.remove()

    def _task_ids(self, task_id: int | torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(task_id, device=hidden_states.device).long().reshape(-1)
        batch = hidden_states.shape[0]
        if ids.numel() == 1:
            ids = ids.expand(batch)
        if ids.numel() != batch:
            raise ValueError(f"task_id has {ids.numel()} entries for a batch of {batch}")
        num_tasks = self.config.num_tasks
        if bool(((ids < 0) | (ids >= num_tasks)).any()):
            raise ValueError(f"task_id must be in [0, {num_tasks}) ({dict(TASKS)}), got {ids.tolist()}")
        return ids


# diffusers reads a model's config keys off its constructor signature (`ConfigMixin.extract_init_dict`);
# advertise the parent's keyword arguments plus `num_tasks`, so `from_pretrained` passes them all.
_parent_parameters = list(inspect.signature(CogVideoXTransformer3DModel.__init__).parameters.values())
UDPDiffTransformer3DModel.__init__.__signature__ = inspect.Signature(
    [
        _parent_parameters[0],
        inspect.Parameter("num_tasks", inspect.Parameter.KEYWORD_ONLY, default=len(TASKS)),
        *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in _parent_parameters[1:]),
    ]
)


def split_latent(latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, F, 2C, H, W] -> (video latent, dense latent), each [B, F, C, H, W]."""
    if latent.shape[2] % 2:
        raise ValueError(f"expected an even channel count (video | dense), got shape {tuple(latent.shape)}")
    return latent.chunk(2, dim=2)


def join_latent(video: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    if video.shape != dense.shape:
        raise ValueError(f"video latent {tuple(video.shape)} and dense latent {tuple(dense.shape)} differ")
    return torch.cat([video, dense], dim=2)


def _widen_in(weight: torch.Tensor, channels: int, init: DenseInit, generator: torch.Generator):
    out_features = weight.shape[0]
    grouped = weight.reshape(out_features, channels, -1)
    if init == "duplicate":
        extra = grouped
    else:
        fan_in = 2 * grouped[0].numel()
        extra = _default_init(grouped.shape, fan_in, generator).to(grouped.dtype)
    widened = torch.cat([grouped, extra], dim=1)
    shape = list(weight.shape)
    shape[1] = shape[1] * 2
    return widened.reshape(shape)


def _widen_out(tensor: torch.Tensor, channels: int, init: DenseInit, generator: torch.Generator, fan_in: int):
    # proj_out rows (and bias entries) are laid out (C, patch): the dense half is a second C block.
    grouped = tensor.reshape(channels, -1, *tensor.shape[1:])
    if init == "duplicate":
        extra = grouped
    else:
        extra = _default_init(grouped.shape, fan_in, generator).to(grouped.dtype)
    return torch.cat([grouped, extra], dim=0).reshape(2 * tensor.shape[0], *tensor.shape[1:])


def _default_init(shape: torch.Size, fan_in: int, generator: torch.Generator) -> torch.Tensor:
    # nn.Linear / nn.Conv2d's default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1) * bound


def widen_from_base(
    base: CogVideoXTransformer3DModel,
    *,
    dense_init: DenseInit = "duplicate",
    num_tasks: int = len(TASKS),
    seed: int = 0,
) -> UDPDiffTransformer3DModel:
    """The UDPDiff transformer initialised from a (pretrained) CogVideoX transformer; `base` is untouched."""
    if dense_init not in ("duplicate", "random"):
        raise ValueError(f"dense_init must be 'duplicate' or 'random', got {dense_init!r}")
    if isinstance(base, UDPDiffTransformer3DModel):
        raise ValueError("base is already a UDPDiff transformer; widen a plain CogVideoX transformer")
    config = {k: v for k, v in base.config.items() if not k.startswith(_PRIVATE_CONFIG_PREFIX)}
    in_channels = config["in_channels"]
    out_channels = config["out_channels"] or in_channels
    config.update(in_channels=2 * in_channels, out_channels=2 * out_channels)

    generator = torch.Generator().manual_seed(seed)
    state = dict(base.state_dict())
    state["patch_embed.proj.weight"] = _widen_in(
        state["patch_embed.proj.weight"], in_channels, dense_init, generator
    )
    inner_dim = state["proj_out.weight"].shape[1]
    state["proj_out.weight"] = _widen_out(
        state["proj_out.weight"], out_channels, dense_init, generator, inner_dim
    )
    state["proj_out.bias"] = _widen_out(
        state["proj_out.bias"], out_channels, dense_init, generator, inner_dim
    )
    reference = state["proj_out.weight"]
    state["task_embedding.weight"] = torch.zeros(
        num_tasks, config["time_embed_dim"], dtype=reference.dtype, device=reference.device
    )

    # Built on the meta device and filled by assignment: no second random copy of a 5B model in memory.
    with torch.device("meta"):
        model = UDPDiffTransformer3DModel(num_tasks=num_tasks, **config)
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (the 2B's sin-cos positional table) are not in a state dict.
    for name, buffer in base.named_buffers():
        if name not in state:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = buffer.clone()
    return model.train(base.training)
