"""What both demos (v1: acestep/demo.py, 1.5: acestep/demo_v15.py) share: the synthetic songs they train on,
the tiny model's learning rate, and the loss-curve plot."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SAMPLE_RATE = 48000
SYNTHETIC_MAX_SECONDS = 30.0
DEFAULT_MAX_SECONDS = 360.0  # stage 3's --max_duration default
TINY_LEARNING_RATE = 3e-3  # the tiny random model needs a push to show a falling curve in a minute
DEFAULT_LORA_CONFIG = Path(__file__).resolve().parents[1] / "config" / "lora_config_transformer_only.json"
# (prompt tags, lyrics, base frequency in Hz) of the generated songs
SYNTHETIC_SONGS = [
    ("ambient, synth, calm, slow", "[instrumental]", 220.0),
    ("electronic, bass, energetic, fast", "[verse]\nlights go on\nwe move along\n\n[chorus]\nla la la", 110.0),
    ("acoustic, guitar, happy, melodic", "[verse]\nsun is high\nsing with me\n\n[chorus]\noh oh oh", 330.0),
    ("dark, drums, metal, fast", "[verse]\nrun run run\n\n[chorus]\nhey hey", 82.4),
    ("dreamy, piano, sad, slow", "[verse]\nrain on the window\n\n[outro]\ngoodbye", 261.6),
    ("funk, upbeat, bass, drums", "[chorus]\nget up get down", 146.8),
]


def synth_song(seconds: float, base_hz: float, seed: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Stereo float32 [samples, 2]: a few notes of a tone with harmonics, a noise hi-hat, a little reverb-ish tail."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    notes = base_hz * 2 ** (rng.choice([0, 3, 5, 7, 10, 12], size=int(seconds * 2)) / 12)
    freq = notes[np.minimum((t * 2).astype(int), len(notes) - 1)]
    phase = 2 * np.pi * np.cumsum(freq) / rate
    tone = sum(np.sin(k * phase) / k for k in (1, 2, 3))
    envelope = np.exp(-4 * ((t * 2) % 1))
    hat = rng.standard_normal(len(t)) * np.exp(-40 * ((t * 4) % 1))
    mono = 0.25 * tone * envelope + 0.05 * hat
    pan = 0.2 * np.sin(2 * np.pi * 0.25 * t)
    return np.stack([mono * (1 - pan), mono * (1 + pan)], axis=1).astype(np.float32)


def write_synthetic_songs(folder: Path, count: int, seconds: float) -> Path:
    """WAV files with <stem>_prompt.txt and <stem>_lyrics.txt beside them; existing files are kept as they are."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        tags, lyrics, base_hz = SYNTHETIC_SONGS[i % len(SYNTHETIC_SONGS)]
        stem = f"song{i:02d}"
        audio = folder / f"{stem}.wav"
        if not audio.exists():
            temp = folder / f".{stem}.tmp.wav"
            sf.write(temp, synth_song(seconds, base_hz, seed=i), SAMPLE_RATE, subtype="PCM_16")
            temp.replace(audio)
        for suffix, text in (("_prompt.txt", tags), ("_lyrics.txt", lyrics)):
            side = folder / f"{stem}{suffix}"
            if not side.exists():
                side.write_text(text + "\n", encoding="utf-8")
    return folder


def plot_loss_curve(metrics_file: Path, png: Path) -> Path | None:
    """Loss per step (and its running mean) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from acestep.training.callbacks import read_metrics

    rows = read_metrics(metrics_file)
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    window = max(1, len(rows) // 10)
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "total loss"), ("denoising_loss", "flow-matching loss")):
        if key not in rows[0]:
            continue
        values = np.array([r[key] for r in rows])
        line = axis.plot(steps, values, alpha=0.3)[0]
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1:], smooth, color=line.get_color(), label=f"{label} (mean of {window})")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss")
    axis.legend()
    figure.tight_layout()
    temp = png.with_name(f".{png.stem}.tmp.png")
    figure.savefig(temp, dpi=100)
    plt.close(figure)
    temp.replace(png)
    return png


def song_seconds(args: argparse.Namespace) -> tuple[float, float | None]:
    """(seconds stage 3 keeps per song, the trainer's crop): --max_duration when given; your songs whole, as the
    stage scripts' defaults keep them (up to 360 s, no crop); the synthetic songs at 30 s."""
    if args.max_duration is not None:
        return args.max_duration, args.max_duration
    if args.data_dir:
        return DEFAULT_MAX_SECONDS, None
    return SYNTHETIC_MAX_SECONDS, SYNTHETIC_MAX_SECONDS


def crop_note(keep: float, crop: float | None) -> str:
    """What happens to the length of the user's songs, said before any work."""
    if crop is None:
        return (f"songs used whole (stage 3 keeps up to {keep:g} s each); --max_duration N trains N-second crops "
                "to fit a smaller GPU")
    return f"songs cut to {keep:g} s and trained in {crop:g}-second crops (--max_duration)"
