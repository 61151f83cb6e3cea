"""Stage 1 with transformers: `python generate_prompts_lyrics.py --data_dir DIR [--lyrics] [--model ...]`."""

from acestep.captioning.cli import main_transformers

if __name__ == "__main__":
    raise SystemExit(main_transformers())
