"""The listening models: CLAP (audio and text embeddings in one space) and MERT (music features), each loaded through
its real `from_pretrained` from a hub id or a local folder, and a word error rate for lyrics.

Audio goes in as mono float arrays with their rate; each model resamples to its own rate. Long audio is cut into
the model's fixed windows (CLAP: 10 s) and the window embeddings averaged, so nothing is cropped at random.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from acestep.core.errors import AcestepError

DEFAULT_CLAP = "laion/larger_clap_music"
DEFAULT_MERT = "m-a-p/MERT-v1-330M"


class ModelLoadError(AcestepError):
    """A listening model that cannot load: one line naming it and the fix."""


def load_failure(what: str, name: str | Path, flag: str, error: Exception) -> ModelLoadError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelLoadError(f"{what} model {name}: cannot load ({reason}); pass {flag} with a hub id or a local folder "
                          "holding it")


def resample(wav: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono [n] float32 at `target`, with the toolkit's resampler (soxr HQ, as the data stages)."""
    from acestep.audio.resample import resample as resample_channels

    return resample_channels(np.asarray(wav, dtype=np.float32)[None], rate, target)[0]


def to_mono(wav: np.ndarray) -> np.ndarray:
    """[samples] or [channels, samples] -> [samples] float32."""
    wav = np.asarray(wav, dtype=np.float32)
    return wav.mean(axis=0) if wav.ndim == 2 else wav


class ClapEmbedder:
    """transformers ClapModel + ClapProcessor: unit-length audio and text embeddings in the shared space."""

    def __init__(self, model: torch.nn.Module, processor: object, name: str, device: str = "cpu") -> None:
        self.model, self.processor, self.name, self.device = model.to(device).eval(), processor, name, device
        extractor = processor.feature_extractor
        self.rate = int(extractor.sampling_rate)
        self.window = int(extractor.nb_max_samples)

    @classmethod
    def from_pretrained(cls, name: str | Path = DEFAULT_CLAP, device: str = "cpu") -> ClapEmbedder:
        from transformers import ClapModel, ClapProcessor

        try:
            model = ClapModel.from_pretrained(str(name))
            processor = ClapProcessor.from_pretrained(str(name))
        except (OSError, ValueError) as error:
            raise load_failure("CLAP", name, "--clap", error) from error
        return cls(model, processor, str(name), device)

    @staticmethod
    def _pooled(output: object) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def audio(self, wav: np.ndarray, rate: int) -> np.ndarray:
        """One song -> [d], the normalised mean of its 10 s windows' embeddings."""
        mono = resample(to_mono(wav), rate, self.rate)
        windows = [mono[i : i + self.window] for i in range(0, max(len(mono), 1), self.window)]
        windows = [w for w in windows if len(w) >= self.rate // 10] or windows[:1]  # a sliver at the end adds noise
        inputs = self.processor(audio=windows, sampling_rate=self.rate, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        embedded = torch.nn.functional.normalize(self._pooled(self.model.get_audio_features(**inputs)).float(), dim=-1)
        return torch.nn.functional.normalize(embedded.mean(0), dim=0).cpu().numpy()

    @torch.no_grad()
    def text(self, texts: list[str]) -> np.ndarray:
        """[n, d] unit-length text embeddings."""
        inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        embedded = self._pooled(self.model.get_text_features(**inputs)).float()
        return torch.nn.functional.normalize(embedded, dim=-1).cpu().numpy()


class MertEmbedder:
    """MERT frame features averaged over the song. `features(mono48)` -> [frames, hidden] is the SSL extraction the
    training data uses (given by the caller, so this package stays free of model-family code)."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        self.features, self.name = features, name

    @torch.no_grad()
    def audio(self, wav: np.ndarray, rate: int) -> np.ndarray:
        mono48 = torch.from_numpy(resample(to_mono(wav), rate, 48000))
        return self.features(mono48).float().mean(0).cpu().numpy()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, over lower-cased words without punctuation
    (jiwer's definition with its usual normalisation); an empty reference gives 0 for an empty hypothesis, else 1."""
    ref, hyp = _words(reference), _words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, other in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1] / len(ref)


def _words(text: str) -> list[str]:
    import re

    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def singable_lyrics(lyrics: str) -> str:
    """The words a singer sings: section tags ([verse], [chorus]) and [instrumental] markers dropped."""
    import re

    return " ".join(re.sub(r"\[[^\]]*\]", " ", lyrics).split())
