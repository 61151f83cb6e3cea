"""Finding the lyric vocabulary (it is not part of the Hugging Face checkpoint) and a tiny stand-in.

Order of `resolve_lyrics_vocab`: an explicit path, $ACESTEP_LYRICS_VOCAB, the checkpoint's
`lyric_tokenizer/vocab.json`, then a sha256-checked copy of the upstream file pinned to one commit,
cached under the user cache folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from acestep.core.atomic import atomic_write_with
from acestep.core.errors import CheckpointError
from acestep.families.v1.lyrics.languages import ALL_SPECIAL_TOKENS, UNK_TOKEN

logger = logging.getLogger(__name__)

ENV_VAR = "ACESTEP_LYRICS_VOCAB"
UPSTREAM_COMMIT = (
    "d612523f50e252c0e138e68ae75b06223f96e934"  # ace-step/ACE-Step; the file is unchanged since 54da683
)
VOCAB_URL = f"https://raw.githubusercontent.com/ace-step/ACE-Step/{UPSTREAM_COMMIT}/acestep/models/lyrics_utils/vocab.json"
VOCAB_SHA256 = "c2a66ea48c478c0bb9acb5497144b926acdeaa37128faa799508d40f2b9cc558"
CHECKPOINT_SUBPATH = Path("lyric_tokenizer") / "vocab.json"


def cache_dir() -> Path:
    """$ACESTEP_CACHE_DIR, else $XDG_CACHE_HOME/acestep, else ~/.cache/acestep (also on Windows)."""
    if os.environ.get("ACESTEP_CACHE_DIR"):
        return Path(os.environ["ACESTEP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "acestep"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_vocab(path: Path, expected: str = VOCAB_SHA256) -> None:
    """Raise CheckpointError unless the file's sha256 is the pinned one."""
    actual = sha256_of(path)
    if actual != expected:
        raise CheckpointError(f"{path}: lyric vocabulary sha256 is {actual}, expected {expected}")


def download_vocab(dest: Path, url: str = VOCAB_URL, timeout: float = 60.0) -> Path:
    """Download to `dest` atomically; the file is kept only if its sha256 matches."""

    def download(temp: Path) -> None:
        with open(temp, "xb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            out.write(response.read())
        try:
            verify_vocab(temp)
        except CheckpointError as exc:
            raise CheckpointError(
                f"downloaded {url} does not match the pinned vocabulary, not kept: {exc}"
            ) from exc

    return atomic_write_with(dest, download)


def _options_text(checkpoint_dir: str | Path | None) -> str:
    where = (
        f"{Path(checkpoint_dir) / CHECKPOINT_SUBPATH}"
        if checkpoint_dir
        else f"<checkpoint>/{CHECKPOINT_SUBPATH.as_posix()}"
    )
    return f"pass its path explicitly, set ${ENV_VAR}, put the file at {where}, or allow the download of {VOCAB_URL}"


def resolve_lyrics_vocab(
    explicit: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    download: bool = True,
) -> Path:
    """Path of the lyric vocabulary (see the module docstring for the order); CheckpointError if none."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise CheckpointError(f"{path}: lyric vocabulary not found")
        return path
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR])
        if not path.is_file():
            raise CheckpointError(f"{path}: lyric vocabulary named by ${ENV_VAR} not found")
        return path
    if checkpoint_dir is not None and (Path(checkpoint_dir) / CHECKPOINT_SUBPATH).is_file():
        return Path(checkpoint_dir) / CHECKPOINT_SUBPATH
    cached = cache_dir() / "lyrics" / f"vocab-{UPSTREAM_COMMIT[:12]}.json"
    if cached.is_file():
        try:
            verify_vocab(cached)
            return cached
        except CheckpointError:
            logger.warning("cached lyric vocabulary %s is corrupt; fetching it again", cached)
            cached.unlink()
    if not download:
        raise CheckpointError(f"no lyric vocabulary found; {_options_text(checkpoint_dir)}")
    logger.info("downloading the lyric vocabulary from %s", VOCAB_URL)
    try:
        return download_vocab(cached)
    except OSError as exc:  # URLError, HTTPError and timeouts are OSErrors
        raise CheckpointError(
            f"lyric vocabulary download failed ({exc}); {_options_text(checkpoint_dir)}"
        ) from exc


# A few lines of cleaned text in the forms the pipeline produces (lower case, pinyin with tones,
# romaji, romanised Korean, accented Latin, Cyrillic, Devanagari), so a tiny BPE learns real pieces.
_TINY_SAMPLE = """\
hello world, i love you! la la la... the night is young and we're dancing - yes? (oh)
one two three four five six seven eight nine ten twenty hundred
wo3 xi3 huan1 zai4 yu3 tian1 li3 ting1 yin1 yue4 chang4 chu1 wo3 de5 ren2 sheng1 xuan2 lv4
ame no hi ni ongaku wo kiku no ga suki desu kokoro no naka de
bi oneun nal-e eum-ag-eul deudneun geos-eul jeulgibnida saranghae
j'aime écouter de la musique les jours de pluie ich habe drei hunde
мне нравится слушать музыку в дождливую погоду
नमस्ते दुनिया संगीत
"""


def write_tiny_lyric_vocab(path: str | Path) -> int:
    """Train and write a small vocabulary in the real file's format; returns its size (ids incl. added tokens).

    Same model type (BPE, [UNK]), Whitespace pre-tokenizer and the same special-token texts as the real
    vocabulary; the ids differ, which LyricTokenizer handles by looking tokens up by text.
    """
    path = Path(path)
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(ALL_SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(_TINY_SAMPLE.splitlines(), trainer=trainer)
    atomic_write_with(path, lambda temp: tokenizer.save(str(temp)))  # not mkstemp: that makes the file 0600
    return tokenizer.get_vocab_size(with_added_tokens=True)
