"""The Uni-C classifier (Sec. III-D): p(y = 1 | z_t, t) from the frozen SD U-Net encoder.

Features are the SD 1.5 U-Net's own encoder (conv_in, time embedding, down blocks, mid block) run on
the noisy latent z_t at timestep t with a text condition (the image's prompt, or the empty prompt);
they are average-pooled over space and fed to a linear binary head. The encoder is frozen (it *is*
the sampler's U-Net, shared, not a copy); only the head trains. Gradients still flow to z_t, which
is what guided sampling needs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

HEAD_FILE = "head.safetensors"


class UniCClassifier(nn.Module):
    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        # Held outside the module tree: the encoder is the sampler's U-Net, frozen, and must not be
        # saved with, moved with or optimised with the head.
        self._unet = [unet]
        width = unet.config.block_out_channels[-1]  # the mid block's channels
        self.head = nn.Linear(width, 1)
        nn.init.zeros_(self.head.weight)  # starts at p = 0.5 everywhere: an uninformative prior
        nn.init.zeros_(self.head.bias)

    @property
    def unet(self) -> UNet2DConditionModel:
        return self._unet[0]

    def features(
        self, z_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """Pooled mid-block features (B, C) of the frozen encoder."""
        unet = self.unet
        t = torch.as_tensor(t, device=z_t.device).reshape(-1).expand(z_t.shape[0])
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=z_t.dtype))
        sample = unet.conv_in(z_t)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, _ = block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                sample, _ = block(hidden_states=sample, temb=emb)
        sample = unet.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states)
        return sample.mean(dim=(2, 3))

    def forward(
        self, z_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B,) of y = 1."""
        features = self.features(z_t, t, encoder_hidden_states)
        return self.head(features.to(self.head.weight.dtype)).squeeze(-1)

    def log_prob(
        self, z_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor, y: int = 1
    ) -> torch.Tensor:
        """log p(y | z_t, t), shape (B,)."""
        logits = self(z_t, t, encoder_hidden_states)
        return nn.functional.logsigmoid(logits if y == 1 else -logits)

    def save_head(self, directory: Path) -> Path:
        from safetensors.torch import save_file

        from vidprior.io.atomic import atomic_path

        path = Path(directory) / HEAD_FILE
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(tmp))
        return path

    def load_head(self, directory_or_file: Path) -> UniCClassifier:
        from safetensors.torch import load_file

        path = Path(directory_or_file)
        path = path / HEAD_FILE if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"{path}: no classifier head (expected {HEAD_FILE} from `unic train`)")
        state = load_file(str(path))
        expected = {k: tuple(v.shape) for k, v in self.head.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != expected:
            raise ValueError(f"{path}: head tensors {got} do not fit this U-Net (expected {expected})")
        self.head.load_state_dict(state)
        return self


def build_classifier(unet: UNet2DConditionModel) -> UniCClassifier:
    """A classifier on `unet` (frozen here: requires_grad off, eval mode), head on the U-Net's device."""
    unet.requires_grad_(False)
    unet.eval()
    classifier = UniCClassifier(unet)
    return classifier.to(device=unet.device)


@torch.no_grad()
def text_condition(tokenizer, text_encoder, prompts: list[str], mode: str = "prompt") -> torch.Tensor:
    """The encoder's text condition (B, L, D): each prompt's CLIP embedding, or the empty prompt's."""
    texts = prompts if mode == "prompt" else [""] * len(prompts)
    tokens = tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]
