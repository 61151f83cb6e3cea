"""Stage 5: bake LoRA alpha into the weights so ComfyUI and the upstream pipeline load it at strength 1."""

from acestep.lora.bake import main

if __name__ == "__main__":
    main()
