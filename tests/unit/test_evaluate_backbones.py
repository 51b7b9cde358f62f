"""Metric backbones: built once per spec, pretrained weights never hang offline, weight files load."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from vidprior.config import load_params
from vidprior.evaluate import backbones, score_videos
from vidprior.models.aesthetic_head import build_aesthetic_head
from vidprior.models.loading import ModelUnavailableError
from vidprior.models.spec import ModelSpec, TinySpec
from vidprior.models.weights_file import resolve_weights_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))


def test_backbones_are_built_once_per_spec():
    spec = ModelSpec(tiny=TinySpec(seed=0))
    assert backbones.clip(spec) is backbones.clip(ModelSpec(tiny=TinySpec(seed=0)))
    assert backbones.clip(spec) is not backbones.clip(ModelSpec(tiny=TinySpec(seed=5)))
    assert backbones.dino(spec) is backbones.dino(spec)


@pytest.mark.parametrize(
    ("metric", "key", "model"),
    [
        ("subject_consistency", "dino", "facebook/dino-vitb16"),
        ("background_consistency", "clip", "openai/clip-vit-base-patch32"),
        ("aesthetic_quality", "aesthetic_clip", "openai/clip-vit-large-patch14"),
        ("imaging_quality", "musiq", "chaofengc/IQA-PyTorch-Weights/musiq_spaq_ckpt-358bb6af.pth"),
    ],
)
def test_offline_pretrained_backbones_fail_at_once_naming_the_model(offline_empty_cache, metric, key, model):
    params = load_params([ROOT / "params.yaml", ROOT / "params" / "paper.yaml"])
    assert getattr(params.evaluate, key).pretrained == model
    import numpy as np

    started = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=model.replace(".", r"\.")):
        score_videos([np.zeros((3, 16, 16, 3), np.uint8)], [8.0], ["p"], [metric], params)
    assert time.monotonic() - started < 5


def test_offline_fvd_and_missing_aesthetic_head_say_what_to_fetch(offline_empty_cache):
    import numpy as np

    from vidprior.evaluate import fvd

    params = load_params([ROOT / "params.yaml", ROOT / "params" / "paper.yaml"])
    video = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(ModelUnavailableError, match="MCG-NJU/videomae-base-finetuned-kinetics"):
        fvd([video], [video], params)
    with pytest.raises(ModelUnavailableError, match="LAION-AI/aesthetic-predictor"):
        build_aesthetic_head(params.evaluate.aesthetic_head)


def test_weight_files_local_or_hub(tmp_path, offline_empty_cache):
    local = tmp_path / "head.pth"
    local.write_bytes(b"")
    assert resolve_weights_file(ModelSpec(pretrained=str(local))) == local
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE is set"):
        resolve_weights_file(ModelSpec(pretrained="owner/repo/weights.pth"))
    with pytest.raises(ModelUnavailableError, match=r"not an existing local file, nor <owner>/<repo>/<file>"):
        resolve_weights_file(ModelSpec(pretrained="missing.pth"))


def test_aesthetic_head_loads_laions_state_dict_and_rejects_other_shapes(tmp_path):
    head = torch.nn.Linear(768, 1)
    path = tmp_path / "sa_0_4_vit_l_14_linear.pth"
    torch.save(head.state_dict(), path)
    loaded = build_aesthetic_head(ModelSpec(pretrained=str(path)))
    x = torch.randn(2, 768)
    assert torch.equal(loaded(x), head(x))
    with pytest.raises(ValueError, match=r"expected keys weight \[1, 32\]"):
        build_aesthetic_head(ModelSpec(pretrained=str(path)), in_features=32)
    tiny = build_aesthetic_head(ModelSpec(tiny=TinySpec(seed=0)), in_features=32)
    assert tiny.weight.shape == (1, 32)
    assert torch.equal(tiny.weight, build_aesthetic_head(ModelSpec(tiny=TinySpec(seed=0)), 32).weight)


def test_params_tiny_defaults_and_paper_models():
    tiny = load_params([ROOT / "params.yaml"]).evaluate
    assert all(
        getattr(tiny, k).tiny is not None
        for k in ("aesthetic_clip", "aesthetic_head", "musiq", "dino", "clip", "videomae")
    )
    assert (tiny.dynamic_degree.threshold_px, tiny.dynamic_degree.target_fps, tiny.depth_align) == (
        6.0,
        8.0,
        "scale_shift",
    )
    paper = load_params([ROOT / "params.yaml", ROOT / "params" / "paper.yaml"]).evaluate
    assert paper.videomae.pretrained == "MCG-NJU/videomae-base-finetuned-kinetics"
    assert paper.aesthetic_head.pretrained.endswith("sa_0_4_vit_l_14_linear.pth")
    assert paper.fvd.frames == 16
