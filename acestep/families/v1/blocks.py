"""Where --gradient_checkpointing, --base_dtype fp8 and --compile act in the v1 transformer (one definition for the
family's `BLOCKS`, the trainer's parts, the planner and the probe)."""

from __future__ import annotations

from acestep.training.family import ModelBlocks

# ACEStepTransformer2DModel: its `transformer_blocks` are checkpointed and compiled one by one; fp8 stores the Linears
# and pointwise Conv1d of the blocks, of the SSL projectors and of the timestep modulation (norms, embeddings, the
# patch embedding and the lyric encoder stay 16-bit)
BLOCKS = ModelBlocks(block_list="transformer_blocks", fp8_prefixes=("transformer_blocks.", "projectors.", "t_block."))
