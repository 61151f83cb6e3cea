"""Stage 2: build the filename dataset from a folder of songs (see acestep/data/filenames.py)."""

from acestep.data.filenames import main

if __name__ == "__main__":
    main()
