"""Stage 4: train a LoRA on a preprocessed dataset (see acestep/training/); the model family (ACE-Step v1 or 1.5)
comes from --checkpoint_dir."""

from acestep.families.training import main

if __name__ == "__main__":
    main()
