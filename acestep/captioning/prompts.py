"""The instruction text sent to the captioning model; shared by the transformers and llama.cpp backends."""

from __future__ import annotations

# Qwen2.5-Omni's own default system prompt: the model card asks for it verbatim, and the model follows
# instructions less reliably without it.
SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)

TAGS_INSTRUCTION = """Describe this music with short tags for a music generation dataset.
Give tags for: genre and sub-genre, every audible instrument, mood, vocal type (for example "female vocal", \
"male vocal", "rap", "choir", or "instrumental" when nobody sings), and tempo in words (for example "slow", \
"mid-tempo", "fast").
Rules: answer with one line of lower-case tags separated by commas, 8 to 20 tags, each tag one to three words. \
Do not write numbers or BPM values, sentences, explanations or anything else."""

LYRICS_INSTRUCTION = """Transcribe the sung or rapped lyrics in this audio, exactly as sung, in the original language.
Put one sung line per output line. Where a new song section starts, put a tag on its own line: [verse], \
[pre-chorus], [chorus], [bridge], [intro], [outro] or [hook].
If nobody sings or raps in this audio, answer exactly: [instrumental]
Answer with the lyrics only: no title, no comments, no translation."""


def lyrics_instruction(part: int, parts: int) -> str:
    """The lyrics instruction, telling the model which consecutive piece of the song it hears."""
    if parts <= 1:
        return LYRICS_INSTRUCTION
    return f"This is part {part} of {parts} of one song, in order.\n{LYRICS_INSTRUCTION}"

# The task lines of ACE-Step's own annotation models (the model cards of ACE-Step/acestep-captioner and
# ACE-Step/acestep-transcriber): the task comes first, then the audio. The captioner answers in prose; the
# transcriber answers "# Languages" (the sung language), then "# Lyrics" with section tags such as [Verse 1].
CAPTIONER_TASK = "*Task* Describe this audio in detail"
TRANSCRIBER_TASK = "*Task* Transcribe this audio in detail"
