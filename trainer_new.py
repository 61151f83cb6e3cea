"""Stage 4: train a LoRA on a preprocessed dataset (see acestep/training/)."""

from acestep.training.cli import main

if __name__ == "__main__":
    main()
