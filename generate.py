"""Text-to-music with optional LoRAs, ACE-Step v1 or 1.5 (told by --checkpoint_dir):
`python generate.py --prompt "pop, piano" --duration 30`."""

from acestep.families.generation import main

if __name__ == "__main__":
    main()
