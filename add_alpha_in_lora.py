"""Stage 5: bake LoRA alpha into the weights so ComfyUI and the upstream pipeline load it at strength 1."""

from acestep import families
from acestep.lora.bake import main

if __name__ == "__main__":
    families.load_all()  # each family hands the LoRA tools its key styles (light: no torch for --help)
    main()
