"""Stage 4: train a LoRA on a preprocessed dataset (see acestep/training/); the model family (ACE-Step v1 or 1.5)
comes from --checkpoint_dir."""

from acestep.families.training import plan_model_for, training_parts_for
from acestep.training.cli import main

if __name__ == "__main__":
    main(build_parts=training_parts_for, plan_model=plan_model_for)
