"""The runtime images (images/): Dockerfile structure and pins, and what images/build.sh runs.

No image is built here (no registry access for CUDA base images): the Dockerfiles are parsed into
instructions and checked, and build.sh runs with --dry-run, which prints its docker commands.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from vidprior.config import load_params

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
NAMES = ("base", "train", "label")
DIGEST = re.compile(r"^#\s+(?P<image>\S+:\S+)@sha256:(?P<digest>[0-9a-f]{64})\s*$")


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of images/Dockerfile.<name>, continuation lines joined."""
    out, pending = [], ""
    for line in (IMAGES / f"Dockerfile.{name}").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        pending += (
            " " + stripped.removesuffix("\\").strip() if pending else stripped.removesuffix("\\").strip()
        )
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            out.append((keyword.upper(), rest.strip()))
            pending = ""
    assert not pending, f"Dockerfile.{name} ends inside a continued line"
    return out


def args_of(name: str) -> dict[str, str]:
    found = {}
    for keyword, rest in instructions(name):
        if keyword == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            found[key] = value.strip('"')
    return found


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split("==") for d in deps if "==" in d)


def test_every_dockerfile_is_parsed_and_starts_from_a_build_arg():
    for name in NAMES:
        steps = instructions(name)
        froms = [rest for keyword, rest in steps if keyword == "FROM"]
        assert froms, name
        first_from = next(i for i, (k, _) in enumerate(steps) if k == "FROM")
        declared = {rest.split("=")[0] for k, rest in steps[:first_from] if k == "ARG"}
        for image in froms:
            ref = image.split()[0]
            match = re.fullmatch(r"\$\{(\w+)\}", ref)
            assert match, f"Dockerfile.{name}: FROM {ref} is not a build arg"
            assert match[1] in declared, f"Dockerfile.{name}: FROM ${{{match[1]}}} not declared before FROM"
    # train and label are built on top of the base image build.sh just built.
    for name in ("train", "label"):
        final = [rest for k, rest in instructions(name) if k == "FROM"][-1]
        assert final == "${BASE_IMAGE}", name


def test_cuda_images_are_pinned_by_tag_with_a_digest_comment():
    for name, arg in (("base", "CUDA_RUNTIME_IMAGE"), ("train", "CUDA_DEVEL_IMAGE")):
        tag = args_of(name)[arg]
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(runtime|devel)-ubuntu\d+\.\d+", tag), tag
        digests = [
            m.groupdict()
            for line in (IMAGES / f"Dockerfile.{name}").read_text().splitlines()
            if (m := DIGEST.match(line))
        ]
        assert [d["image"] for d in digests] == [tag], f"Dockerfile.{name}: no digest comment for {tag}"
    # torch's CUDA (13.0 for torch 2.13.0) and the CUDA images agree, devel included (nvcc for the ops).
    assert args_of("base")["CUDA_RUNTIME_IMAGE"].split(":")[1][:4] == "13.0"
    assert args_of("train")["CUDA_DEVEL_IMAGE"].split(":")[1][:4] == "13.0"


def _commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line (split at && and ;, quotes respected)."""
    commands, current = [], []
    for word in shlex.split(run):
        if word in ("&&", ";", "||"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [*commands, current]


def test_versions_match_pyproject_and_every_pip_install_is_pinned():
    pins = pyproject_pins()
    assert args_of("base")["TORCH_VERSION"] == pins["torch"]
    assert args_of("train")["TORCH_VERSION"] == pins["torch"]
    assert args_of("train")["DEEPSPEED_VERSION"] == pins["deepspeed"]
    for name in NAMES:
        variables = args_of(name)
        for keyword, rest in instructions(name):
            if keyword != "RUN":
                continue
            for words in _commands(rest):
                command = shlex.join(words)
                if "pip" not in words[:3] or "install" not in words and "wheel" not in words:
                    continue
                start = max(words.index(w) for w in ("install", "wheel") if w in words) + 1
                for word in words[start:]:
                    if word.startswith("-") or "/" in word or word == ".":
                        continue  # flags, wheel files and the project itself (pinned by pyproject)
                    if word in variables.values() or re.fullmatch(r"\$\{\w+\}|\$\(\w+\)", word):
                        continue  # a flag's value (e.g. --wheel-dir /wheels)
                    assert "==" in word, f"Dockerfile.{name}: unpinned pip package {word!r} in: {command}"


def test_base_image_ships_the_project_params_and_policies():
    steps = instructions("base")
    copies = [rest.split() for k, rest in steps if k == "COPY"]
    sources = {src for *srcs, _ in copies for src in srcs}
    assert {"pyproject.toml", "README.md", "src", "params.yaml", "params", "mlflow/policies"} <= sources
    for source in sources:  # every COPY source exists, so the build context has it
        assert (ROOT / source).exists(), source
    envs = " ".join(rest for k, rest in steps if k == "ENV")
    assert "VIDPRIOR_HOME=/opt/vidprior" in envs
    workdirs = [rest for k, rest in steps if k == "WORKDIR"]
    assert "/opt/vidprior" in workdirs  # the COPYs above land under VIDPRIOR_HOME
    assert any("pip install ." in rest for k, rest in steps if k == "RUN")
    ignore = (IMAGES / "Dockerfile.base.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][0] == "*"  # an allowlist: everything else stays out
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is filtered out of the context"


def test_train_image_prebuilds_deepspeed_ops_for_a100_and_h100():
    steps = instructions("train")
    envs = " ".join(rest for k, rest in steps if k == "ENV")
    for flag in ("DS_BUILD_FUSED_ADAM=1", "DS_BUILD_CPU_ADAM=1", "DS_BUILD_UTILS=1"):
        assert flag in envs
    assert set(args_of("train")["TORCH_CUDA_ARCH_LIST"].split(";")) == {"8.0", "9.0"}
    runs = " ".join(rest for k, rest in steps if k == "RUN")
    assert "--no-build-isolation" in runs  # the ops compile against the pinned torch, not a fresh one
    assert "COPY --from=deepspeed-build" in " ".join(f"{k} {r}" for k, r in steps)


def test_label_image_adds_opencv_system_libraries():
    runs = " ".join(rest for k, rest in instructions("label") if k == "RUN")
    for package in ("libgl1", "libglib2.0-0", "ffmpeg", "ca-certificates"):
        assert package in runs


def dry_run(*args: str) -> list[list[str]]:
    result = subprocess.run(
        ["bash", str(IMAGES / "build.sh"), "--dry-run", *args],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "VIDPRIOR": str(Path(sys.executable).parent / "vidprior")},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def _option(words: list[str], flag: str) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words) if w == flag]


def test_build_script_builds_base_first_with_the_params_tags_then_pushes(tmp_path):
    custom = tmp_path / "images.yaml"
    tags = {
        "base": "reg.example/v/base:1",
        "train": "reg.example/v/train:1",
        "label": "reg.example/v/label:1",
    }
    custom.write_text(yaml.safe_dump({"images": tags}))
    commands = dry_run("--params", str(ROOT / "params.yaml"), "--params", str(custom), "--push")
    builds = [c for c in commands if "build" in c]
    assert [Path(_option(c, "--file")[0]).name for c in builds] == [f"Dockerfile.{n}" for n in NAMES]
    assert [_option(c, "--tag") for c in builds] == [[tags[n]] for n in NAMES]
    assert _option(builds[0], "--build-arg") == []
    assert [_option(c, "--build-arg") for c in builds[1:]] == [[f"BASE_IMAGE={tags['base']}"]] * 2
    assert all(c[-1] == str(ROOT) for c in builds)  # the repository is the context
    assert commands[len(builds) :] == [["docker", "push", tags[n]] for n in NAMES]


def test_build_script_defaults_to_params_yaml_and_rejects_unknown_options():
    defaults = load_params([ROOT / "params.yaml"]).images
    builds = dry_run()
    assert [_option(c, "--tag")[0] for c in builds] == [defaults.base, defaults.train, defaults.label]
    assert not any("push" in c for c in builds)
    bad = subprocess.run(["bash", str(IMAGES / "build.sh"), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument '--bogus'" in bad.stderr


def test_tags_helper_names_a_missing_tag():
    sys.path.insert(0, str(IMAGES))
    try:
        import tags
    finally:
        sys.path.remove(str(IMAGES))
    assert tags.tags_from("images: {base: a:1, train: b:1, label: c:1}") == {
        "base": "a:1",
        "train": "b:1",
        "label": "c:1",
    }
    with pytest.raises(SystemExit, match=r"missing image tag\(s\): images.label"):
        tags.tags_from("images: {base: a:1, train: b:1}")
    with pytest.raises(SystemExit, match="not a valid image reference"):
        tags.tags_from("images: {base: 'a b', train: b:1, label: c:1}")
