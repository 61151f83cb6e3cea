"""Stage 3: encode a filename dataset into training tensors (see acestep/data/preprocess.py)."""

from acestep.data.preprocess import main

if __name__ == "__main__":
    main()
