"""UDPDiff: dense prediction (entity segmentation, depth) with a video diffusion model."""
