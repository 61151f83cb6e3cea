"""Lyrics that need no model: tags written into real mp3/flac/m4a/ogg files with mutagen, and .lrc files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from mutagen.flac import FLAC
from mutagen.id3 import ID3, SYLT, USLT, Encoding
from mutagen.mp4 import MP4
from mutagen.oggvorbis import OggVorbis

from acestep.captioning.embedded_lyrics import find_user_lyrics, read_embedded_lyrics, read_lrc
from acestep.core.errors import InputError

SAMPLE_RATE = 44_100
ENCODERS = {".mp3": "libmp3lame", ".m4a": "aac"}


def write_tone(path: Path, seconds: float = 1.0) -> Path:
    """A stereo sine in the container the suffix names (soundfile for wav/flac/ogg, PyAV for mp3/m4a)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    stereo = np.stack([tone, tone])
    if path.suffix in (".wav", ".flac", ".ogg"):
        sf.write(path, stereo.T, SAMPLE_RATE)
        return path
    with av.open(str(path), "w") as container:
        stream = container.add_stream(ENCODERS[path.suffix], rate=SAMPLE_RATE, layout="stereo")
        frame = av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


LYRICS = "[Verse 1]\nfirst line\nsecond line\n\n[Chorus]\nsing it"
EXPECTED = "[verse]\nfirst line\nsecond line\n\n[chorus]\nsing it"


def test_mp3_id3_uslt(tmp_path: Path) -> None:
    audio = write_tone(tmp_path / "song.mp3")
    tags = ID3()
    tags.add(USLT(encoding=Encoding.UTF8, lang="eng", desc="", text=LYRICS))
    tags.save(audio)
    found = read_embedded_lyrics(audio)
    assert found is not None and found.text == EXPECTED and found.source == "ID3 USLT"


def test_mp3_id3_sylt_when_no_uslt(tmp_path: Path) -> None:
    audio = write_tone(tmp_path / "song.mp3")
    tags = ID3()
    tags.add(SYLT(encoding=Encoding.UTF8, lang="eng", format=2, type=1, text=[("hello", 0), ("world", 1500)]))
    tags.save(audio)
    found = read_embedded_lyrics(audio)
    assert found is not None and found.text == "hello\nworld" and found.source == "ID3 SYLT"


def test_flac_lyrics_comment(tmp_path: Path) -> None:
    audio = write_tone(tmp_path / "song.flac")
    tagged = FLAC(audio)
    tagged["LYRICS"] = LYRICS
    tagged.save()
    found = read_embedded_lyrics(audio)
    assert found is not None and found.text == EXPECTED and found.source == "FLAC LYRICS"


def test_ogg_unsyncedlyrics_comment_with_lrc_timestamps(tmp_path: Path) -> None:
    audio = write_tone(tmp_path / "song.ogg")
    tagged = OggVorbis(audio)
    tagged["UNSYNCEDLYRICS"] = "[00:01.00]la la\n[00:02.50]la"
    tagged.save()
    found = read_embedded_lyrics(audio)
    assert found is not None and found.text == "la la\nla" and found.source == "OggVorbis UNSYNCEDLYRICS"


def test_m4a_lyr_atom(tmp_path: Path) -> None:
    audio = write_tone(tmp_path / "song.m4a")
    tagged = MP4(audio)
    tagged["\xa9lyr"] = [LYRICS]
    tagged.save()
    found = read_embedded_lyrics(audio)
    assert found is not None and found.text == EXPECTED and found.source == "MP4 ©lyr"


@pytest.mark.parametrize("suffix", [".mp3", ".flac", ".wav", ".m4a"])
def test_untagged_files_have_no_lyrics(tmp_path: Path, suffix: str) -> None:
    assert read_embedded_lyrics(write_tone(tmp_path / f"song{suffix}")) is None


def test_unreadable_file_has_no_lyrics(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"not audio at all")
    assert read_embedded_lyrics(bad) is None


def test_lrc_parsing(tmp_path: Path) -> None:
    lrc = tmp_path / "song.lrc"
    lrc.write_text(
        "\ufeff[ar: Someone]\n[ti:Title]\n[length: 03:12]\n[offset:+200]\n"
        "[00:10.00]First line\n[00:12.50][01:40.00]Repeated <00:13.10>line\n\n"
        "[00:20.00][Chorus]\n[00:21.00]Sing\n",
        encoding="utf-8",
    )
    assert read_lrc(lrc) == "First line\nRepeated line\n\n[chorus]\nSing"


def test_lrc_not_utf8_is_an_input_error(tmp_path: Path) -> None:
    lrc = tmp_path / "song.lrc"
    lrc.write_bytes("[00:01.00]caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match=r"song\.lrc: LRC file is not UTF-8"):
        read_lrc(lrc)


def test_lrc_beside_audio_wins_over_embedded_tags(tmp_path: Path) -> None:
    audio = write_tone(tmp_path / "Song.flac")
    tagged = FLAC(audio)
    tagged["LYRICS"] = "embedded words"
    tagged.save()
    (tmp_path / "Song.LRC").write_text("[00:01.00]lrc words\n", encoding="utf-8")
    found = find_user_lyrics(audio)
    assert found is not None and found.text == "lrc words" and found.source.startswith("lrc file")
    (tmp_path / "Song.LRC").unlink()
    found = find_user_lyrics(audio)
    assert found is not None and found.text == "embedded words" and found.source == "FLAC LYRICS"
