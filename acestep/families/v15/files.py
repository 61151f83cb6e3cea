"""The file and folder names of ACE-Step 1.5's two checkpoint layouts: what checkpoint.py resolves and what the
LoRA tools' merge reads and writes (handed to them in the family's TransformerKind). No torch: the package's
import reads this."""

from __future__ import annotations

TEXT_ENCODER_FOLDER = "Qwen3-Embedding-0.6B"
# original layout: a DiT folder whose one weights file holds the DiT (keys under DIT_PREFIX), the condition encoder
# and the audio tokenizers; the files below make a folder a DiT folder
DIT_WEIGHTS = "model.safetensors"
DIT_FILES = (DIT_WEIGHTS, "config.json", "silence_latent.pt")
DIT_PREFIX = "decoder."
# diffusers layout: the DiT in its own folder
TRANSFORMER_FOLDER = "transformer"
DIFFUSERS_PARTS = (TRANSFORMER_FOLDER, "condition_encoder", "vae", "text_encoder", "tokenizer")
