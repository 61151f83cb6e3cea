"""Stage 1 through a running llama-server: `python generate_prompts_lyrics_llamacpp.py --data_dir DIR`."""

from acestep.captioning.cli import main_llamacpp

if __name__ == "__main__":
    raise SystemExit(main_llamacpp())
