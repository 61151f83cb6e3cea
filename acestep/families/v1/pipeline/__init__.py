"""Text-to-music inference: sampling schedule, guidance and the generation pipeline."""
