#!/usr/bin/env bash
# Build (and optionally push) the three runtime images with the tags in params.images.
#
#   images/build.sh [--params FILE]... [--push] [--dry-run] [--no-cache] [--platform P]
#
# Order: base first; train and label are built FROM the base tag just built (build arg BASE_IMAGE).
# --dry-run prints the docker commands instead of running them. Run from anywhere; the build context
# is the repository root, filtered per image by images/Dockerfile.<image>.dockerignore (BuildKit).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VIDPRIOR="${VIDPRIOR:-$ROOT/.venv/bin/vidprior}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DOCKER="${DOCKER:-docker}"

params=()
push=0
dry_run=0
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --params|-p) params+=(--params "$2"); shift 2 ;;
    --push) push=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --no-cache) extra+=(--no-cache); shift ;;
    --platform) extra+=(--platform "$2"); shift 2 ;;
    -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#params[@]} -gt 0 ]] || params=(--params "$ROOT/params.yaml")

# The tags come from the params the pipelines compile with, never from this script.
tags="$(cd "$ROOT" && "$VIDPRIOR" params show "${params[@]}" | "$PYTHON" "$ROOT/images/tags.py")"
eval "$tags"

revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"

run() {
  if [[ $dry_run -eq 1 ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

build() {  # build <image> <tag> [build args...]
  local image="$1" tag="$2"; shift 2
  run env DOCKER_BUILDKIT=1 "$DOCKER" build "${extra[@]}" \
    --file "$ROOT/images/Dockerfile.$image" \
    --tag "$tag" \
    --label "org.opencontainers.image.revision=$revision" \
    --label "org.opencontainers.image.title=vidprior-$image" \
    "$@" "$ROOT"
}

build base "$BASE_TAG"
build train "$TRAIN_TAG" --build-arg "BASE_IMAGE=$BASE_TAG"
build label "$LABEL_TAG" --build-arg "BASE_IMAGE=$BASE_TAG"

if [[ $push -eq 1 ]]; then
  for tag in "$BASE_TAG" "$TRAIN_TAG" "$LABEL_TAG"; do
    run "$DOCKER" push "$tag"
  done
fi
