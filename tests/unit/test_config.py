from pathlib import Path

import pytest
import yaml

from vidprior.config import ParamsError, flatten, load_params

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "params.yaml"
PAPER = ROOT / "params" / "paper.yaml"


def _overlay(tmp_path: Path, data: dict, name: str = "override.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_tiny_profile_is_the_default_and_valid():
    params = load_params([TINY])
    assert params.profile == "tiny"
    assert params.models.sd15.tiny is not None
    assert params.unic.prompts.dedup.threshold == 0.8
    assert params.unic.prompts.embedder.hashing is not None


def test_paper_overlay_sets_paper_models_and_counts():
    params = load_params([TINY, PAPER])
    assert params.profile == "paper"
    assert params.models.sd15.pretrained == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert params.models.sd15.tiny is None
    assert params.models.cogvideox.pretrained.endswith("CogVideoX-5b")
    assert params.unic.prompts.embedder.pretrained == "openai/clip-vit-large-patch14"
    assert params.unic.images.per_prompt == 5
    assert (params.unic.train.steps, params.unic.train.lr) == (20_000, 1e-5)
    assert (params.udpdiff.train.steps, params.udpdiff.train.lr) == (40_000, 1e-5)
    assert params.unic.lambdas.sd_svd == 8 and params.unic.lambdas.animatediff == 2


def test_unknown_key_names_key_file_and_expected_keys(tmp_path):
    bad = _overlay(tmp_path, {"unic": {"prompts": {"dedupe": {"threshold": 0.9}}}})
    with pytest.raises(ParamsError) as err:
        load_params([TINY, bad])
    message = str(err.value)
    assert "unknown key 'unic.prompts.dedupe'" in message
    assert str(bad) in message
    assert "dedup" in message.split("expected one of:")[1]


def test_mistyped_value_names_key_file_and_expectation(tmp_path):
    bad = _overlay(tmp_path, {"unic": {"prompts": {"dedup": {"threshold": "0.8"}}}})
    with pytest.raises(ParamsError) as err:
        load_params([TINY, bad])
    message = str(err.value)
    assert "unic.prompts.dedup.threshold" in message
    assert str(bad) in message
    assert "valid number" in message and "'0.8'" in message


def test_out_of_range_value(tmp_path):
    bad = _overlay(tmp_path, {"unic": {"prompts": {"dedup": {"threshold": 1.5}}}})
    with pytest.raises(ParamsError, match=r"unic\.prompts\.dedup\.threshold.*less than or equal to 1"):
        load_params([TINY, bad])


def test_error_points_at_the_file_that_set_the_key(tmp_path):
    # The bad value comes from the base file, not from the overlay.
    base = yaml.safe_load(TINY.read_text())
    base["seed"] = "zero"
    base_file = _overlay(tmp_path, base, "base.yaml")
    overlay = _overlay(tmp_path, {"profile": "tiny"})
    with pytest.raises(ParamsError) as err:
        load_params([base_file, overlay])
    assert f"{base_file}: key 'seed'" in str(err.value)


def test_model_spec_needs_exactly_one_source(tmp_path):
    bad = _overlay(tmp_path, {"models": {"svd": {"pretrained": "stabilityai/svd"}}})  # tiny still set
    with pytest.raises(ParamsError, match=r"models\.svd.*exactly one of 'pretrained'.*'tiny'"):
        load_params([TINY, bad])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params([tmp_path / "nope.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("unic: [unclosed\n")
    with pytest.raises(ParamsError, match=f"{broken}: not valid YAML"):
        load_params([broken])


def test_missing_required_section(tmp_path):
    data = yaml.safe_load(TINY.read_text())
    del data["models"]
    with pytest.raises(ParamsError, match="missing required key 'models'"):
        load_params([_overlay(tmp_path, data)])


def test_digest_changes_with_values(tmp_path):
    a = load_params([TINY])
    b = load_params([TINY, _overlay(tmp_path, {"seed": 1})])
    assert a.digest() == load_params([TINY]).digest()
    assert a.digest() != b.digest()


def test_flatten_gives_dotted_keys():
    flat = flatten(load_params([TINY]).unic.prompts, "unic.prompts.")
    assert flat["unic.prompts.dedup.threshold"] == 0.8
    assert flat["unic.prompts.embedder.hashing.dim"] == 512
