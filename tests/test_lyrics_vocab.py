"""Lyric vocabulary resolution order and the sha256 check, without network."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest

from acestep.core.errors import CheckpointError
from acestep.families.v1.lyrics import resolve_lyrics_vocab
from acestep.families.v1.lyrics import vocab as vocab_module

REAL_DOWNLOAD = vocab_module.download_vocab  # the autouse fixture replaces the module attribute


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No env override, a private cache folder, and a download that fails the test if it is reached."""
    monkeypatch.delenv(vocab_module.ENV_VAR, raising=False)
    monkeypatch.setenv("ACESTEP_CACHE_DIR", str(tmp_path / "cache"))

    def no_network(dest: Path) -> Path:
        raise AssertionError("unexpected download")

    monkeypatch.setattr(vocab_module, "download_vocab", no_network)
    return tmp_path


def _file(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_explicit_path_comes_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    explicit = _file(tmp_path / "mine.json")
    monkeypatch.setenv(vocab_module.ENV_VAR, str(_file(tmp_path / "env.json")))
    checkpoint = tmp_path / "ckpt"
    _file(checkpoint / "lyric_tokenizer" / "vocab.json")
    assert resolve_lyrics_vocab(explicit, checkpoint) == explicit


def test_missing_explicit_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing.json: lyric vocabulary not found"):
        resolve_lyrics_vocab(tmp_path / "missing.json")


def test_env_var_comes_before_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = _file(tmp_path / "env.json")
    monkeypatch.setenv(vocab_module.ENV_VAR, str(env))
    checkpoint = tmp_path / "ckpt"
    _file(checkpoint / "lyric_tokenizer" / "vocab.json")
    assert resolve_lyrics_vocab(checkpoint_dir=checkpoint) == env
    monkeypatch.setenv(vocab_module.ENV_VAR, str(tmp_path / "gone.json"))
    with pytest.raises(CheckpointError, match=r"\$ACESTEP_LYRICS_VOCAB"):
        resolve_lyrics_vocab(checkpoint_dir=checkpoint)


def test_checkpoint_copy_comes_before_cache(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    inside = _file(checkpoint / "lyric_tokenizer" / "vocab.json")
    assert resolve_lyrics_vocab(checkpoint_dir=checkpoint) == inside


def test_download_goes_to_the_cache_and_is_reused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lyrics_vocab_path: Path
) -> None:
    calls: list[Path] = []

    def fake_download(dest: Path) -> Path:
        calls.append(dest)
        return _file(dest, lyrics_vocab_path.read_text("utf-8"))

    monkeypatch.setattr(vocab_module, "download_vocab", fake_download)
    first = resolve_lyrics_vocab(checkpoint_dir=tmp_path / "empty_ckpt")
    second = resolve_lyrics_vocab()
    assert first == second == calls[0] and len(calls) == 1
    assert first.parent == tmp_path / "cache" / "lyrics"


def test_corrupt_cache_is_fetched_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lyrics_vocab_path: Path
) -> None:
    cached = _file(tmp_path / "cache" / "lyrics" / f"vocab-{vocab_module.UPSTREAM_COMMIT[:12]}.json", "bad")
    monkeypatch.setattr(
        vocab_module, "download_vocab", lambda dest: _file(dest, lyrics_vocab_path.read_text("utf-8"))
    )
    assert resolve_lyrics_vocab() == cached
    assert vocab_module.sha256_of(cached) == vocab_module.VOCAB_SHA256


def test_no_download_allowed_lists_the_options(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as caught:
        resolve_lyrics_vocab(checkpoint_dir=tmp_path / "ckpt", download=False)
    message = str(caught.value)
    assert "$ACESTEP_LYRICS_VOCAB" in message and vocab_module.VOCAB_URL in message
    assert str(tmp_path / "ckpt" / "lyric_tokenizer" / "vocab.json") in message


def test_failed_download_lists_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(dest: Path) -> Path:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(vocab_module, "download_vocab", offline)
    with pytest.raises(CheckpointError, match=r"download failed .*no route to host.*ACESTEP_LYRICS_VOCAB"):
        resolve_lyrics_vocab()


def test_sha256_of_the_real_vocab(lyrics_vocab_path: Path) -> None:
    vocab_module.verify_vocab(lyrics_vocab_path)


def test_sha256_mismatch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="sha256 is .* expected c2a66ea4"):
        vocab_module.verify_vocab(_file(tmp_path / "other.json", '{"model": {}}'))


def test_download_keeps_only_a_matching_file(tmp_path: Path, lyrics_vocab_path: Path) -> None:
    """The real download function over file:// URLs: a wrong file leaves nothing behind."""
    wrong = _file(tmp_path / "wrong.json", "{}")
    dest = tmp_path / "cache" / "vocab.json"
    with pytest.raises(CheckpointError, match="not kept"):
        REAL_DOWNLOAD(dest, url=wrong.as_uri())
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert REAL_DOWNLOAD(dest, url=lyrics_vocab_path.as_uri()) == dest
    assert dest.read_bytes() == lyrics_vocab_path.read_bytes()
