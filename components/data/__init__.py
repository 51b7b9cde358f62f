"""Data components: collect and curate the inputs of the Uni-C and UDPDiff pipelines."""

from components.data.prompts import collect_prompts

__all__ = ["collect_prompts"]
