"""The LAION aesthetic predictor v1 (LAION-AI/aesthetic-predictor `sa_0_4_vit_l_14_linear.pth`): one
`nn.Linear(768, 1)` on L2-normalised CLIP ViT-L/14 image embeddings, scoring 1..10 (VBench's head).

The file is a plain state dict (`weight` [1, 768], `bias` [1]); it is not on the hub, so the paper
profile names a local copy. A tiny spec builds a random head of the same form whose input width is the
(tiny) CLIP's projection width.
"""

from __future__ import annotations

import torch

from vidprior.models.loading import ModelUnavailableError, seeded
from vidprior.models.spec import ModelSpec
from vidprior.models.weights_file import load_state_dict, resolve_weights_file

AESTHETIC_HEAD_FILE = "sa_0_4_vit_l_14_linear.pth"
AESTHETIC_HEAD_URL = "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth"


def build_aesthetic_head(spec: ModelSpec, in_features: int = 768) -> torch.nn.Linear:
    head = torch.nn.Linear(in_features, 1)
    if spec.tiny is not None:
        with seeded(spec.tiny.seed):
            head.reset_parameters()
        return head.eval()
    try:
        path = resolve_weights_file(spec)
    except ModelUnavailableError as e:
        raise ModelUnavailableError(f"LAION aesthetic head: {e} The file is {AESTHETIC_HEAD_URL}") from None
    state = load_state_dict(path)
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"{path}: not a LAION linear aesthetic head for {in_features}-d features "
            f"(expected keys weight [1, {in_features}] and bias [1]): {e}"
        ) from None
    return head.eval()
