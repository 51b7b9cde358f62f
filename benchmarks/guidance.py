"""Wall time of Uni-C guided vs unguided SD sampling (same prompts, seeds, steps, CFG on), as a ratio.

Sizes:
- `tiny`: the tiny random-weight SD of the local profile (CPU, seconds);
- `sd15`: SD 1.5's real architecture (U-Net, VAE, CLIP ViT-L/14 text encoder) with random weights,
  for the GPU device (bf16 there); peak GPU memory is reported too.

Guidance adds one classifier forward + backward through the frozen encoder (down blocks and mid
block) per step on top of the U-Net's two CFG passes, so the ratio is the number to watch
(target on the GPU: <= 1.3x).

    .venv/bin/python benchmarks/guidance.py [--size tiny|sd15] [--steps 10] [--height 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch


def sd15_sized(device: str, dtype: torch.dtype):
    """SD 1.5's architecture with random weights (no download): the cost of the real model."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from vidprior.models.sd15 import SD15_SCHEDULER, SD15Parts
    from vidprior.models.tokenizers import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    modules = [m.to(device=device, dtype=dtype).eval() for m in (unet, vae, text)]
    return SD15Parts(
        *modules[:2], modules[2], tokenizer, DDIMScheduler(**SD15_SCHEDULER), "sd15-sized-random"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--height", type=int, default=None, help="default: 64 tiny, 512 sd15")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lambda", dest="lambda_", type=float, default=8.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from vidprior.models import ModelSpec, TinySpec, build_sd15
    from vidprior.unic.classifier import build_classifier
    from vidprior.unic.generation import quiet_library_logs
    from vidprior.unic.workflows import sample_sd

    quiet_library_logs()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    height = args.height or (64 if args.size == "tiny" else 512)
    parts = build_sd15(ModelSpec(tiny=TinySpec(seed=0))) if args.size == "tiny" else sd15_sized(device, dtype)
    classifier = build_classifier(parts.unet)
    with torch.no_grad():
        classifier.head.weight.normal_(generator=torch.Generator().manual_seed(0))
    classifier.head.to(device=device, dtype=dtype)
    prompts = [f"a dog running across a field, take {i}" for i in range(args.batch)]
    seeds = list(range(args.batch))

    def once(lambda_: float) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        sample_sd(
            parts,
            classifier,
            prompts,
            seeds,
            lambda_=lambda_,
            steps=args.steps,
            guidance_scale=7.5,
            height=height,
            width=height,
        )
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    once(0.0)  # warm-up: kernels, allocator, lazy imports
    result = {
        "size": args.size,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "height": height,
    }
    for name, lambda_ in (("unguided", 0.0), ("guided", args.lambda_)):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = [once(lambda_) for _ in range(args.repeats)]
        result[f"{name}_s"] = round(statistics.median(times), 3)
        if device == "cuda":
            result[f"{name}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    result["ratio"] = round(result["guided_s"] / result["unguided_s"], 3)
    result.update(steps=args.steps, batch=args.batch, threads=torch.get_num_threads(), cpus=os.cpu_count())
    result["machine"] = torch.cuda.get_device_name() if device == "cuda" else platform.machine()
    if args.json:
        print(json.dumps(result))
        return
    keys = list(result)
    print(
        "| "
        + " | ".join(keys)
        + " |\n|"
        + "---|" * len(keys)
        + "\n| "
        + " | ".join(str(result[k]) for k in keys)
        + " |"
    )


if __name__ == "__main__":
    main()
