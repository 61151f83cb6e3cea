"""Listening scores for a LoRA run (`python -m acestep.evaluate`): style distance, prompt adherence, change from the
base model, memorization and lyric intelligibility per saved step, and the best step by a documented rule.

Everything here is family-free; only cli.py reaches the model families (rendering)."""
