"""MUSIQ (Ke et al., "MUSIQ: Multi-scale Image Quality Transformer", ICCV 2021) in plain torch.

VBench's Imaging Quality scores frames with pyiqa's MUSIQ; pyiqa (and torchvision, which it needs) is
not a dependency, so the architecture is rebuilt here with pyiqa's module and parameter names
(`pyiqa/archs/musiq_arch.py`), so its released checkpoints load as they are:

* weights: a pyiqa MUSIQ checkpoint (`musiq_spaq_ckpt-358bb6af.pth`, VBench's choice, or
  `musiq_koniq_ckpt-e95806b9.pth`, ...; hub repo `chaofengc/IQA-PyTorch-Weights`), a torch pickle of
  the state dict (possibly under "params") or the same tensors re-saved as .safetensors with
  `safetensors.torch.save_file(torch.load(f, weights_only=True), "musiq.safetensors")`. No key renaming
  is needed; a checkpoint converted from the official JAX/Flax release must use pyiqa's names and
  layouts (Linear weights [out, in], conv weights [out, in, kh, kw]). The head width is read from the
  file: 1 (a MOS regressor: KonIQ, SPAQ, PaQ-2-PiQ) or 10 (AVA's score distribution, turned into
  its mean).
* input: RGB in [0, 1], [B, 3, H, W]; every image of a batch is the same size (frames of a video).

The image becomes a multi-scale patch pyramid: the image resized (aspect kept, bicubic) so its long
side is each of `longer_side_lengths` (224 and 384), plus the original resolution; each scale is cut
into non-overlapping `patch_size` patches (TF "SAME" zero padding at the border). Every patch carries
a hash-based 2D spatial index (its row and column mapped onto a `grid x grid` table, so any aspect
ratio shares one learned table) and a scale index; the resized scales are zero-padded to a fixed
length (ceil(side / patch)^2) and the padding masked out of attention. Patches are embedded by a
ResNet stem (weight-standardised convs, GroupNorm) and a linear layer, get the spatial and scale
embeddings added, and a pre-norm transformer encoder over [CLS] + patches feeds the MOS head from the
CLS token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidprior.models.loading import finish_tiny, seeded, torch_dtype
from vidprior.models.spec import ModelSpec
from vidprior.models.weights_file import load_state_dict, resolve_weights_file

MUSIQ_WEIGHTS_REPO = "chaofengc/IQA-PyTorch-Weights"
MUSIQ_SPAQ_FILE = "musiq_spaq_ckpt-358bb6af.pth"  # VBench's Imaging Quality checkpoint


@dataclass(frozen=True)
class MusiqConfig:
    """pyiqa's MUSIQ defaults; `num_scales` counts the resized scales plus the original resolution."""

    patch_size: int = 32
    num_class: int = 1
    hidden_size: int = 384
    mlp_dim: int = 1152
    num_heads: int = 6
    num_layers: int = 14
    spatial_pos_grid_size: int = 10
    longer_side_lengths: tuple[int, ...] = (224, 384)
    # Patches kept from the original resolution: -1 all of them, None leaves that scale out.
    max_seq_len_from_original_res: int | None = -1
    resnet_token_dim: int = 64

    @property
    def num_scales(self) -> int:
        return len(self.longer_side_lengths) + (self.max_seq_len_from_original_res is not None)


TINY_MUSIQ_CONFIG = MusiqConfig(
    patch_size=8,
    hidden_size=16,
    mlp_dim=32,
    num_heads=2,
    num_layers=2,
    spatial_pos_grid_size=4,
    longer_side_lengths=(32, 48),
    resnet_token_dim=32,
)


def _same_padding(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF "SAME" zero padding (the extra pixel, if any, at the bottom/right)."""
    height, width = x.shape[-2:]
    pad_row = max((math.ceil(height / stride) - 1) * stride + kernel - height, 0)
    pad_col = max((math.ceil(width / stride) - 1) * stride + kernel - width, 0)
    return F.pad(x, (pad_col // 2, pad_col - pad_col // 2, pad_row // 2, pad_row - pad_row // 2))


class SamePad(nn.Module):
    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _same_padding(x, self.kernel, self.stride)


class StdConv(nn.Conv2d):
    """Weight-standardised convolution with "SAME" padding (BiT's ResNet stem, as the official model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _same_padding(x, self.kernel_size[0], self.stride[0])
        weight = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        weight = weight / (weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride)


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, outplanes: int, stride: int = 1):
        super().__init__()
        width = inplanes
        self.conv1 = StdConv(inplanes, width, 1, 1, bias=False)
        self.gn1 = nn.GroupNorm(32, width, eps=1e-4)
        self.conv2 = StdConv(width, width, 3, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, width, eps=1e-4)
        self.conv3 = StdConv(width, outplanes, 1, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, outplanes, eps=1e-4)
        self.relu = nn.ReLU(True)
        self.needs_projection = inplanes != outplanes or stride != 1
        if self.needs_projection:
            self.conv_proj = StdConv(inplanes, outplanes, 1, stride, bias=False)
            self.gn_proj = nn.GroupNorm(32, outplanes, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.gn_proj(self.conv_proj(x)) if self.needs_projection else x
        x = self.relu(self.gn1(self.conv1(x)))
        x = self.relu(self.gn2(self.conv2(x)))
        x = self.gn3(self.conv3(x))
        return self.relu(x + identity)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MUSIQ hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        attn = (q @ k.transpose(-2, -1)) * self.scale
        pair_mask = mask.reshape(b, 1, n, 1) * mask.reshape(b, 1, 1, n)
        # -1e3, not -inf, as the official model: padded rows stay finite (and are never read).
        attn = attn.masked_fill(pair_mask == 0, -1e3).softmax(dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class AddHashSpatialPositionEmbs(nn.Module):
    def __init__(self, grid_size: int, dim: int):
        super().__init__()
        self.position_emb = nn.Parameter(torch.empty(1, grid_size * grid_size, dim))
        nn.init.normal_(self.position_emb, std=0.02)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + self.position_emb.squeeze(0)[positions.long()]


class AddScaleEmbs(nn.Module):
    def __init__(self, num_scales: int, dim: int):
        super().__init__()
        self.scale_emb = nn.Parameter(torch.empty(num_scales, dim))
        nn.init.normal_(self.scale_emb, std=0.02)

    def forward(self, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return x + self.scale_emb[scales.long()]


class TransformerEncoder(nn.Module):
    def __init__(self, config: MusiqConfig):
        super().__init__()
        dim = config.hidden_size
        self.posembed_input = AddHashSpatialPositionEmbs(config.spatial_pos_grid_size, dim)
        self.scaleembed_input = AddScaleEmbs(config.num_scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.transformer = nn.ModuleDict(
            {
                f"encoderblock_{i}": TransformerBlock(dim, config.mlp_dim, config.num_heads)
                for i in range(config.num_layers)
            }
        )

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, scales: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        x = self.scaleembed_input(self.posembed_input(x, positions), scales)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        for block in self.transformer.values():
            x = block(x, mask)
        return self.encoder_norm(x)


def hashed_spatial_positions(grid_size: int, count_h: int, count_w: int) -> torch.Tensor:
    """Hash index (row * grid + column, rows and columns mapped to the grid by nearest) of each patch."""
    grid = torch.arange(grid_size, dtype=torch.float32).reshape(1, 1, grid_size)
    cols = F.interpolate(grid, count_w, mode="nearest").reshape(1, count_w).expand(count_h, count_w)
    rows = F.interpolate(grid, count_h, mode="nearest").reshape(count_h, 1).expand(count_h, count_w)
    return (rows * grid_size + cols).reshape(-1)


def _patches_of_scale(
    image: torch.Tensor, config: MusiqConfig, scale_id: int, max_seq_len: int
) -> torch.Tensor:
    """[B, P, 3 * p * p + 3]: flattened patches (channel, row, col order) then position, scale, mask."""
    p = config.patch_size
    b, _, height, width = image.shape
    patches = F.unfold(_same_padding(image, p, p), p, stride=p)  # [B, 3 * p * p, P]
    count_h, count_w = math.ceil(height / p), math.ceil(width / p)
    positions = hashed_spatial_positions(config.spatial_pos_grid_size, count_h, count_w).to(patches)
    extra = torch.stack([positions, torch.full_like(positions, scale_id), torch.ones_like(positions)])
    out = torch.cat([patches, extra.unsqueeze(0).expand(b, -1, -1)], dim=1)
    if max_seq_len >= 0:  # zero padding: position 0, scale 0 and mask 0, so attention ignores it
        out = F.pad(out, (0, max(max_seq_len - out.shape[-1], 0)))[..., :max_seq_len]
    return out.transpose(1, 2)


def multiscale_patches(images: torch.Tensor, config: MusiqConfig) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> [B, sequence, 3 * p * p + 3], the scales in increasing size, then the
    original resolution (if the config keeps it)."""
    _, _, height, width = images.shape
    out = []
    for scale_id, side in enumerate(sorted(config.longer_side_lengths)):
        ratio = side / max(height, width)
        size = (round(height * ratio), round(width * ratio))
        resized = F.interpolate(images, size, mode="bicubic", align_corners=False)
        max_len = int(np.ceil(side / config.patch_size) ** 2)
        out.append(_patches_of_scale(resized, config, scale_id, max_len))
    if config.max_seq_len_from_original_res is not None:
        scale_id = len(config.longer_side_lengths)
        out.append(_patches_of_scale(images, config, scale_id, config.max_seq_len_from_original_res))
    return torch.cat(out, dim=1)


class MUSIQ(nn.Module):
    def __init__(self, config: MusiqConfig = MusiqConfig()):
        super().__init__()
        if config.patch_size % 4:
            raise ValueError(
                f"MUSIQ patch size must be a multiple of 4 (the stem strides by 4), got {config}"
            )
        self.config = config
        token_dim = config.resnet_token_dim
        self.conv_root = StdConv(3, token_dim, 7, 2, bias=False)
        self.gn_root = nn.GroupNorm(32, token_dim, eps=1e-6)
        self.root_pool = nn.Sequential(nn.ReLU(True), SamePad(3, 2), nn.MaxPool2d(3, 2))
        self.block1 = Bottleneck(token_dim, token_dim * 4)
        token_patch = config.patch_size // 4
        self.embedding = nn.Linear(token_dim * 4 * token_patch**2, config.hidden_size)
        self.transformer_encoder = TransformerEncoder(config)
        if config.num_class > 1:
            self.head = nn.Sequential(nn.Linear(config.hidden_size, config.num_class), nn.Softmax(dim=-1))
        else:
            self.head = nn.Linear(config.hidden_size, config.num_class)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, H, W] in [0, 1] -> [B] mean opinion score (the checkpoint's scale: SPAQ 0..100)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"MUSIQ expects RGB images [B, 3, H, W], got {tuple(images.shape)}")
        return self.score_tokens(multiscale_patches((images - 0.5) * 2, self.config))

    def score_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, sequence, 3 * p * p + 3] tokens of `multiscale_patches` -> [B] scores."""
        b, seq_len, _ = tokens.shape
        positions, scales, mask = tokens[..., -3], tokens[..., -2], tokens[..., -1]
        p = self.config.patch_size
        x = tokens[..., :-3].reshape(-1, 3, p, p)
        x = self.block1(self.root_pool(self.gn_root(self.conv_root(x))))
        # channels last before flattening: the official (TF) token layout the embedding was trained on
        x = self.embedding(x.permute(0, 2, 3, 1).reshape(b, seq_len, -1))
        x = self.transformer_encoder(x, positions, scales, mask)
        q = self.head(x[:, 0])
        if q.shape[-1] == 1:
            return q[:, 0]
        return (q * torch.arange(1, q.shape[-1] + 1, device=q.device, dtype=q.dtype)).sum(-1)


def build_musiq(spec: ModelSpec) -> MUSIQ:
    """A tiny spec: `TINY_MUSIQ_CONFIG`, seeded random weights. Else pyiqa's config, weights from the file."""
    if spec.tiny is not None:
        with seeded(spec.tiny.seed):
            model = MUSIQ(TINY_MUSIQ_CONFIG)
        return finish_tiny(model, spec)
    path = resolve_weights_file(spec)
    state = load_state_dict(path)
    num_class = state["head.0.weight"].shape[0] if "head.0.weight" in state else 1
    model = MUSIQ(MusiqConfig(num_class=num_class))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: not a MUSIQ checkpoint in pyiqa's layout: {e}") from None
    return model.to(torch_dtype(spec)).eval()
