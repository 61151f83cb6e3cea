"""`python -m acestep.lora`: the LoRA tools' entry point, in the CLI layer (like trainer_new.py): it imports every
model family first, so each registers its transformer with the tools (kohya names, merge shapes)."""

from acestep import families

from .cli import main

families.load_all()
main()
