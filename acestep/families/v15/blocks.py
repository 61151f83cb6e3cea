"""What the 1.5 planner and trainer both know of the DiT: its latent frame rate, and where checkpointing per block,
fp8 and compile act (a module of its own, so plan.py and training.py need not import each other)."""

from __future__ import annotations

from acestep.training.family import ModelBlocks

LATENT_FRAMES_PER_SECOND = 25.0  # 48 kHz / 1920 (AutoencoderOobleck)
# diffusers' AceStepTransformer1DModel: its `layers` are checkpointed and compiled one by one; fp8 stores the
# Linears of the layers, of both timestep embeddings and of the condition projection (all but 0.1 % of the weights)
BLOCKS = ModelBlocks(block_list="layers", fp8_prefixes=("layers.", "time_embed", "condition_embedder"))
