"""Generating text with diffusion LMs: LLaDA's low-confidence remasking sampler, in PyTorch or ONNX Runtime."""

from sink_modifier.generation.sampler import (
    REMASKING,
    GenerationResult,
    generate,
    generate_with_stats,
    get_num_transfer_tokens,
)

__all__ = ["REMASKING", "GenerationResult", "generate", "generate_with_stats", "get_num_transfer_tokens"]
