"""Image tags from resolved params: reads `vidprior params show` (YAML) on stdin and prints
`BASE_TAG=... TRAIN_TAG=... LABEL_TAG=...` as shell assignments for images/build.sh to eval.

The tags are those the pipelines run (`params.images`), so a build and a compile from the same params
files agree on what each task pulls.
"""

import shlex
import sys

import yaml

ROLES = ("base", "train", "label")


def tags_from(params_yaml: str) -> dict[str, str]:
    data = yaml.safe_load(params_yaml) or {}
    images = data.get("images")
    if not isinstance(images, dict):
        raise SystemExit("params have no 'images' section (expected images.base, images.train, images.label)")
    missing = [role for role in ROLES if not isinstance(images.get(role), str) or not images[role]]
    if missing:
        raise SystemExit(f"params: missing image tag(s): {', '.join('images.' + r for r in missing)}")
    for role in ROLES:
        if any(ch.isspace() for ch in images[role]):
            raise SystemExit(f"params: images.{role} {images[role]!r} is not a valid image reference")
    return {role: images[role] for role in ROLES}


def main() -> None:
    for role, tag in tags_from(sys.stdin.read()).items():
        print(f"{role.upper()}_TAG={shlex.quote(tag)}")


if __name__ == "__main__":
    main()
