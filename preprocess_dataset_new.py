"""Stage 3: encode a filename dataset into training tensors (see acestep/data/preprocess.py); the model family
(ACE-Step v1 or 1.5) comes from --checkpoint_dir."""

from acestep.data.preprocess import main
from acestep.families import song_stages_for_args

if __name__ == "__main__":
    main(song_stages=song_stages_for_args)
