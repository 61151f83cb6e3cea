"""Text-to-music with ACE-Step v1 and optional LoRAs: `python generate.py --prompt "pop, piano" --duration 30`."""

from acestep.pipeline.cli import main

if __name__ == "__main__":
    main()
