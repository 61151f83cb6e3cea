"""Stage 3: encode a filename dataset into training tensors (see acestep/data/preprocess.py); the model family
(ACE-Step v1 or 1.5) comes from --checkpoint_dir."""

from acestep.families.preprocess import main

if __name__ == "__main__":
    main()
