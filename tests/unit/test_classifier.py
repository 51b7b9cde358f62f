"""vidprior.unic.classifier: the Uni-C classifier on the frozen (tiny) SD 1.5 U-Net encoder."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from vidprior.models import ModelSpec, TinySpec, build_sd15
from vidprior.unic.classifier import HEAD_FILE, UniCClassifier, build_classifier, text_condition

TINY = ModelSpec(tiny=TinySpec(seed=0))
PROMPTS = ["a dog runs on the beach", "fireworks over a city"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning threads
    # make every kernel many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd():
    return build_sd15(TINY)


@pytest.fixture(scope="module")
def cond(sd):
    return text_condition(sd.tokenizer, sd.text_encoder, PROMPTS)


@pytest.fixture
def classifier(sd):
    clf = build_classifier(sd.unet)
    with torch.no_grad():  # an informative head, not the zero init (p = 0.5 everywhere)
        clf.head.weight.copy_(torch.randn(clf.head.weight.shape, generator=torch.Generator().manual_seed(0)))
        clf.head.bias.fill_(0.1)
    return clf


def _latents(n: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_log_prob_range(classifier, sd, cond):
    z, t = _latents(), torch.tensor([10, 900])
    width = sd.unet.config.block_out_channels[-1]
    with torch.no_grad():
        assert classifier.features(z, t, cond).shape == (2, width)
        assert classifier(z, t, cond).shape == (2,)
        log_p = classifier.log_prob(z, t, cond)
        log_q = classifier.log_prob(z, t, cond, y=0)
    assert log_p.shape == (2,) and torch.isfinite(log_p).all() and (log_p <= 0).all()
    torch.testing.assert_close(log_p.exp() + log_q.exp(), torch.ones(2))  # p(y=1) + p(y=0) = 1
    # A scalar timestep is broadcast to the batch; another spatial size pools to the same width.
    assert classifier.log_prob(_latents(size=16), 500, cond).shape == (2,)


def test_zero_initialised_head_is_uninformative(sd, cond):
    clf = build_classifier(sd.unet)
    with torch.no_grad():
        log_p = clf.log_prob(_latents(), torch.tensor([10, 900]), cond)
    torch.testing.assert_close(log_p, torch.full((2,), math.log(0.5)))


def test_features_are_the_unets_own_mid_block(classifier, sd, cond):
    z, t = _latents(), torch.tensor([10, 900])
    seen = {}
    hook = sd.unet.mid_block.register_forward_hook(lambda m, i, out: seen.setdefault("mid", out))
    try:
        with torch.no_grad():
            sd.unet(z, t, encoder_hidden_states=cond)
    finally:
        hook.remove()
    with torch.no_grad():
        features = classifier.features(z, t, cond)
    torch.testing.assert_close(features, seen["mid"].mean(dim=(2, 3)))


def test_only_the_head_trains_and_the_unet_is_not_a_submodule(classifier, sd):
    trainable = [name for name, p in classifier.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    assert set(classifier.state_dict()) == {"head.weight", "head.bias"}
    assert not any(p.requires_grad for p in sd.unet.parameters())
    assert not sd.unet.training
    assert classifier.unet is sd.unet  # shared with the sampler, not a copy


def test_gradients_reach_z_t_and_the_head_but_not_the_unet(classifier, sd, cond):
    z = _latents().requires_grad_(True)
    classifier.log_prob(z, torch.tensor([10, 900]), cond).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert classifier.head.weight.grad is not None and classifier.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in sd.unet.parameters())


def test_save_and_load_head_round_trip(classifier, sd, cond, tmp_path):
    path = classifier.save_head(tmp_path)
    assert path == tmp_path / HEAD_FILE and path.is_file()
    for source in (tmp_path, path):  # a directory or the file itself
        loaded = build_classifier(sd.unet).load_head(source)
        for key, value in classifier.head.state_dict().items():
            assert torch.equal(loaded.head.state_dict()[key], value), key
        z = _latents()
        with torch.no_grad():
            assert torch.equal(loaded.log_prob(z, 300, cond), classifier.log_prob(z, 300, cond))


def test_load_head_missing_file_says_how_to_make_one(sd, tmp_path):
    with pytest.raises(FileNotFoundError, match="unic train"):
        build_classifier(sd.unet).load_head(tmp_path)


def test_load_head_with_wrong_shapes_fails_clearly(sd, tmp_path):
    # A head for a U-Net whose mid block has 32 channels, not the tiny one's 64.
    save_file({"weight": torch.zeros(1, 32), "bias": torch.zeros(1)}, str(tmp_path / HEAD_FILE))
    with pytest.raises(ValueError, match=r"do not fit this U-Net .*\(1, 64\)"):
        build_classifier(sd.unet).load_head(tmp_path)
    save_file({"w": torch.zeros(1, 64)}, str(tmp_path / HEAD_FILE))
    with pytest.raises(ValueError, match="do not fit"):
        build_classifier(sd.unet).load_head(tmp_path)


def test_text_condition_modes(sd):
    prompt = text_condition(sd.tokenizer, sd.text_encoder, PROMPTS, mode="prompt")
    empty = text_condition(sd.tokenizer, sd.text_encoder, PROMPTS, mode="empty")
    (empty_prompt,) = text_condition(sd.tokenizer, sd.text_encoder, [""], mode="prompt")
    length, dim = sd.tokenizer.model_max_length, sd.text_encoder.config.hidden_size
    assert prompt.shape == empty.shape == (2, length, dim)
    assert not prompt.requires_grad
    for row in empty:
        torch.testing.assert_close(row, empty_prompt)  # "empty": the empty prompt's embedding
    assert not torch.allclose(prompt[0], empty_prompt)
    assert not torch.allclose(prompt[0], prompt[1])


def test_classifier_is_a_module_of_its_own(sd):
    clf = build_classifier(sd.unet)
    assert isinstance(clf, UniCClassifier)
    assert clf.head.in_features == sd.unet.config.block_out_channels[-1]
    assert clf.head.weight.device == sd.unet.device
