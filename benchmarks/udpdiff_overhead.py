"""Sampling time of UDPDiff (32 latent channels + task embedding) over the base CogVideoX (16), as a ratio.

Both samplers run through `vidprior.udpdiff.sampler` with the same prompt, seed, steps, frames, size,
CFG scale and scheduler; runs alternate base / UDPDiff and the best of `--repeats` (the run least
disturbed by other processes; `--stat median` for the median) is reported for:

- `loop`: the denoising loop (latent preparation + steps x the two CFG transformer passes + scheduler);
- `whole`: the whole call: T5, the loop and VAE decoding (UDPDiff decodes two halves, the base one);
- `transformer` (`--transformer-only`): only the transformer calls of the loop, on fixed inputs.

The paper (one A100-80G, 50 steps, 49 frames): CogVideoX-5B 204.46 s, UDPDiff 205.81 s (+0.66 %).
UDPDiff's extra work per step is tiny next to the 5B transformer: a patch embedding and an output
projection over twice the channels, plus one embedding lookup; the extra VAE decode is the main
difference of a whole call.

On CPU, PyTorch runs the VAE's 3D convolutions for a batch of one through its reference kernel
(`aten::slow_conv3d`) but for a batch of two through oneDNN (profiled: 1.8 s vs 0.4 s of conv time
for the tiny VAE at 17x64x96), so there UDPDiff's one two-half decode call is FASTER than the base's
single-video decode: the `decode` / `whole` rows are meaningful on the GPU only; on CPU read `loop`
and `transformer`.

Sizes: `tiny` (default; CPU): the project's tiny random-weight CogVideoX. `2b` / `5b`: the
CogVideoX-2B / -5B transformer configs (below, from the public model repositories) with random
weights, bf16 on CUDA; VAE `--vae full` (the CogVideoX 3D VAE config; default for 2b/5b) or `tiny`;
the T5-XXL text encoder is stood in for by one T5 layer of its width (4096), which costs both samplers
the same. `--layers N` shrinks the transformer for a smoke run on CPU; `--json` prints one JSON line.

    .venv/bin/python benchmarks/udpdiff_overhead.py [--size tiny|2b|5b] [--steps N] [--frames N]
        [--height H --width W] [--vae full|tiny] [--transformer-only] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

TRANSFORMER_COMMON = dict(
    attention_head_dim=64,
    in_channels=16,
    out_channels=16,
    flip_sin_to_cos=True,
    freq_shift=0,
    time_embed_dim=512,
    text_embed_dim=4096,
    dropout=0.0,
    attention_bias=True,
    sample_width=90,
    sample_height=60,
    sample_frames=49,
    patch_size=2,
    temporal_compression_ratio=4,
    max_text_seq_length=226,
    activation_fn="gelu-approximate",
    timestep_activation_fn="silu",
    norm_elementwise_affine=True,
    norm_eps=1e-5,
    spatial_interpolation_scale=1.875,
    temporal_interpolation_scale=1.0,
)
# zai-org/CogVideoX-2b and -5b transformer/config.json.
TRANSFORMERS = {
    "2b": dict(
        TRANSFORMER_COMMON, num_attention_heads=30, num_layers=30, use_rotary_positional_embeddings=False
    ),
    "5b": dict(
        TRANSFORMER_COMMON, num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True
    ),
}
VAE_SCALING = {"2b": 1.15258426, "5b": 0.7}  # vae/config.json scaling_factor
SNR_SHIFT = {"2b": 3.0, "5b": 1.0}  # scheduler/scheduler_config.json snr_shift_scale
PROMPT = "A golden retriever runs along a beach at sunset, waves rolling in, the camera tracking it."
SEED = 1234


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.machine()} CPU"


def _vae(kind: str, size: str):
    from diffusers import AutoencoderKLCogVideoX

    if kind == "full":
        return AutoencoderKLCogVideoX(scaling_factor=VAE_SCALING[size])
    # 8x spatial and 4x temporal compression to 16 channels, as the real VAE, at a fraction of its width.
    return AutoencoderKLCogVideoX(
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        scaling_factor=VAE_SCALING[size],
    )


def sized_parts(size: str, vae: str, layers: int | None, device: str, dtype: torch.dtype):
    """CogVideoXParts with the 2B / 5B transformer architecture and random weights (no download)."""
    from diffusers import CogVideoXDPMScheduler, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from vidprior.models.cogvideox import COGVIDEOX_SCHEDULER, CogVideoXParts
    from vidprior.models.tokenizers import tiny_t5_tokenizer

    config = dict(TRANSFORMERS[size])
    if layers is not None:
        config["num_layers"] = layers
    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):  # random init where it runs: seconds on a GPU, not minutes on CPU
        transformer = CogVideoXTransformer3DModel(**config).to(dtype).eval()
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=4096,
                d_kv=64,
                num_heads=8,
                d_ff=2048,
                num_layers=1,
                feed_forward_proj="gated-gelu",
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id,
            )
        ).to(dtype)
        autoencoder = _vae(vae, size).to(dtype).eval()
    scheduler = CogVideoXDPMScheduler(**dict(COGVIDEOX_SCHEDULER, snr_shift_scale=SNR_SHIFT[size]))
    return CogVideoXParts(
        transformer, autoencoder, text_encoder.eval(), tokenizer, scheduler, f"{size}-sized"
    )


def build(args: argparse.Namespace, device: str, dtype: torch.dtype):
    from vidprior.models import ModelSpec, TinySpec, build_cogvideox
    from vidprior.udpdiff.model import widen_from_base
    from vidprior.udpdiff.sampler import from_parts, to_device

    if args.size == "tiny":
        spec = ModelSpec(tiny=TinySpec(seed=0))
        parts = build_cogvideox(spec)
    else:
        spec = None
        parts = sized_parts(args.size, args.vae, args.layers, device, dtype)
    transformer = widen_from_base(parts.transformer).eval()
    with torch.no_grad():  # a trained model's task embedding is not zero; the cost is the same
        transformer.task_embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
    return to_device(from_parts(transformer, parts, base_spec=spec, with_base=True), device)


def transformer_loop(model, joint: bool, args: argparse.Namespace, device: str) -> float:
    """Seconds for `steps` CFG transformer calls on fixed inputs, nothing else."""
    from vidprior.udpdiff.model import TASKS

    pipe = model.pipeline("dpm++", base=not joint)
    transformer = pipe.transformer
    latent_frames = (args.frames - 1) // pipe.vae_scale_factor_temporal + 1
    h, w = args.height // pipe.vae_scale_factor_spatial, args.width // pipe.vae_scale_factor_spatial
    generator = torch.Generator().manual_seed(SEED)
    channels = transformer.config.in_channels
    dtype = transformer.dtype
    latents = torch.randn((2, latent_frames, channels, h, w), generator=generator).to(device, dtype)
    text = torch.randn((2, transformer.config.max_text_seq_length, transformer.config.text_embed_dim))
    text = text.to(device, dtype)
    rotary = (
        pipe._prepare_rotary_positional_embeddings(
            args.height, args.width, latent_frames, torch.device(device)
        )
        if transformer.config.use_rotary_positional_embeddings
        else None
    )
    extra = {"task_id": torch.full((2,), TASKS["depth"], device=device)} if joint else {}
    timesteps = torch.linspace(999, 0, args.steps).long()
    _sync(device)
    started = time.perf_counter()
    with torch.no_grad():
        for t in timesteps:
            transformer(
                hidden_states=latents,
                encoder_hidden_states=text,
                timestep=t.expand(2).to(device),
                image_rotary_emb=rotary,
                return_dict=False,
                **extra,
            )
    _sync(device)
    return time.perf_counter() - started


def measure(model, args: argparse.Namespace, device: str) -> dict[str, list[float]]:
    from vidprior.udpdiff.sampler import generate, sample_base

    size = dict(steps=args.steps, frames=args.frames, height=args.height, width=args.width)
    times: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        times.setdefault(key, []).append(value)

    for repeat in range(args.repeats + 1):  # the first round warms kernels and the allocator up
        for joint in (False, True):
            name = "udpdiff" if joint else "base"
            if args.transformer_only:
                seconds = transformer_loop(model, joint, args, device)
                if repeat:
                    record(f"transformer_{name}", seconds)
                continue
            if joint:
                out = generate(model, [PROMPT], "depth", [SEED], **size, guidance_scale=args.guidance)
            else:
                out = sample_base(model, [PROMPT], [SEED], **size, guidance_scale=args.guidance)
            if repeat:
                record(f"loop_{name}", out.denoise_seconds)
                record(f"decode_{name}", out.decode_seconds)
                record(f"whole_{name}", out.seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "2b", "5b"], default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="default: 10 tiny, 50 2b/5b")
    parser.add_argument("--frames", type=int, default=None, help="default: 17 tiny, 49 2b/5b")
    parser.add_argument("--height", type=int, default=None, help="default: 64 tiny, 480 2b/5b")
    parser.add_argument("--width", type=int, default=None, help="default: 96 tiny, 720 2b/5b")
    parser.add_argument("--vae", choices=["full", "tiny"], default="full", help="2b/5b only")
    parser.add_argument("--layers", type=int, default=None, help="2b/5b: fewer transformer layers (smoke)")
    parser.add_argument("--transformer-only", action="store_true", help="time the transformer calls only")
    parser.add_argument("--guidance", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--stat", choices=["min", "median"], default="min")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    big = args.size != "tiny"
    args.steps = args.steps or (50 if big else 10)
    args.frames = args.frames or (49 if big else 17)
    args.height = args.height or (480 if big else 64)
    args.width = args.width or (720 if big else 96)

    from vidprior.unic.generation import quiet_library_logs

    quiet_library_logs()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and big else torch.float32
    model = build(args, device, dtype)
    times = measure(model, args, device)

    reduce = min if args.stat == "min" else statistics.median
    best = {k: reduce(v) for k, v in times.items()}
    rows = []
    for part in ("transformer", "loop", "decode", "whole"):
        if f"{part}_base" in best:
            base, ours = best[f"{part}_base"], best[f"{part}_udpdiff"]
            rows.append((part, round(base, 4), round(ours, 4), round(ours / base, 4)))
    machine = torch.cuda.get_device_name() if device == "cuda" else _cpu_name()
    setup = {
        "size": args.size,
        "layers": model.transformer.config.num_layers,
        "device": machine,
        "dtype": str(dtype).removeprefix("torch."),
        "vae": "tiny" if args.size == "tiny" else args.vae,
        "steps": args.steps,
        "frames": args.frames,
        "height": args.height,
        "width": args.width,
        "guidance": args.guidance,
        "repeats": args.repeats,
        "stat": args.stat,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps({**setup, "rows": rows}))
        return
    print(", ".join(f"{k}={v}" for k, v in setup.items()))
    print("\n| part | base CogVideoX (s) | UDPDiff (s) | ratio |\n|---|---|---|---|")
    for part, base, ours, ratio in rows:
        print(f"| {part} | {base} | {ours} | {ratio}x |")


if __name__ == "__main__":
    main()
