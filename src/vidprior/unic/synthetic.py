"""Synthetic VidProM-format prompts with planted near-duplicates, for tests and benchmarks."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd

_SUBJECTS = """
    dog cat horse eagle dolphin tiger robot astronaut dancer surfer skier chef child knight dragon
    fox owl whale shark panda rabbit deer wolf bear parrot jellyfish butterfly racecar train
    sailboat drone balloon skateboarder cyclist violinist drummer monkey penguin giraffe elephant
""".split()
_ACTIONS = """
    running jumping flying swimming dancing spinning climbing racing rolling gliding walking
    galloping diving surfing skating sprinting chasing bouncing drifting marching
""".split()
_PLACES = """on a beach | through a forest | over a city at night | across a desert | in the rain |
under the ocean | on the moon | through a snowy valley | in a neon street | along a river |
over the mountains | in a busy market | on a frozen lake | through a canyon | in a field of flowers"""
_STYLES = """cinematic | 4k | anime style | watercolor | photorealistic | slow motion | film grain |
pixel art | oil painting | drone shot | golden hour | studio ghibli style | highly detailed"""
_PLACES, _STYLES = ([p.strip() for p in " ".join(t.split()).split("|")] for t in (_PLACES, _STYLES))
_EDITS = ("4k", "highly detailed", "beautiful", "realistic")
_NAMESPACE = uuid.UUID("6f1c2a56-8a7e-4c1e-9d38-000000000000")


def synthetic_prompts(n: int, seed: int = 0, near_duplicate_fraction: float = 0.2) -> pd.DataFrame:
    """`n` prompts (`uuid`, `prompt`); about `near_duplicate_fraction` are small edits of earlier ones."""
    rng = np.random.default_rng(seed)
    prompts: list[str] = []
    for _ in range(n):
        if prompts and rng.random() < near_duplicate_fraction:
            base = prompts[int(rng.integers(len(prompts)))]
            edit = rng.integers(3)
            if edit == 0:
                text = f"{base}, {_EDITS[int(rng.integers(len(_EDITS)))]}"
            elif edit == 1:
                text = base.replace("a ", "the ", 1) if base.startswith("a ") else "a " + base
            else:
                text = base.upper() if rng.random() < 0.2 else base + "."
        else:
            text = (
                f"a {rng.choice(_SUBJECTS)} {rng.choice(_ACTIONS)} {rng.choice(_PLACES)}, "
                f"{rng.choice(_STYLES)}, {rng.choice(_STYLES)}"
            )
        prompts.append(text)
    ids = [str(uuid.uuid5(_NAMESPACE, f"{seed}-{i}")) for i in range(n)]
    return pd.DataFrame({"uuid": ids, "prompt": prompts})
