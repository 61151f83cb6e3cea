"""LoRA fine-tuning toolkit for ACE-Step v1 (3.5B): model code, data stages, trainer and LoRA tools."""

__version__ = "0.1.0"
