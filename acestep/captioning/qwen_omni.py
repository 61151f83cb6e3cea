"""Qwen2.5-Omni through transformers: the thinker alone (text answers, no speech), bf16 or GPTQ weights.

The Omni processor cannot be built here without torchvision (it insists on its image/video processors), so
the chat is tokenised by hand in the layout of the Omni chat template, and the audio placeholder is
expanded with the rule from transformers' `processing_qwen2_5_omni.py`: one `<|AUDIO|>` token per output
frame of the audio encoder, i.e. ((L - 1) // 2 + 1 - 2) // 2 + 1 for L feature frames (25 per second).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from acestep.captioning.caption import Answer, BackendUnavailable
from acestep.captioning.clips import MODEL_SAMPLE_RATE
from acestep.captioning.prompts import SYSTEM_PROMPT
from acestep.core.errors import CheckpointError

if TYPE_CHECKING:  # torch loads with the model, not with `generate_prompts_lyrics.py --help`
    import torch

DEFAULT_MODEL = "Qwen/Qwen2.5-Omni-7B"
GPTQ_MODEL = "Qwen/Qwen2.5-Omni-7B-GPTQ-Int4"
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
MISSING_GPTQMODEL = (
    "{model} is a GPTQ checkpoint; loading it needs gptqmodel: pip install 'acestep-lora-trainer[gptq]' "
    "(gptqmodel 7.6 installs beside torch 2.13; 7.7+ needs torch >= 2.14.1), or use the bf16 model {default}"
)


def audio_token_count(feature_frames: int) -> int:
    """Audio placeholder tokens for `feature_frames` mel frames (conv stride 2, then pooling by 2)."""
    after_conv = (feature_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def chat_prefix(system: str = SYSTEM_PROMPT) -> str:
    """Text before the audio in the Omni chat template (system turn, then the user turn opens)."""
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"


def chat_suffix(instruction: str) -> str:
    """Text after the audio: the instruction, the user turn closed, the assistant turn opened."""
    return f"{instruction}<|im_end|>\n<|im_start|>assistant\n"


def read_config(model: str) -> dict[str, Any]:
    """config.json of a local folder or a hub id (cached download); CheckpointError when unreachable."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(model)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the captioning model config of {model}: {err}") from None
    return config


def is_gptq(config: dict[str, Any]) -> bool:
    quant = config.get("quantization_config") or {}
    return str(quant.get("quant_method", "")).lower() == "gptq"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """bf16 on GPUs that have it (fp16 on older ones), float32 on CPU where bf16 matmuls are slow."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class QwenOmniBackend:
    """Answers an instruction about a 16 kHz mono clip of at most 30 s with Qwen2.5-Omni's thinker."""

    def __init__(
        self,
        thinker: torch.nn.Module,
        tokenizer: Any,
        feature_extractor: Any,
        device: str,
        task_first: bool = False,
    ) -> None:
        self.thinker = thinker.eval()
        self.task_first = task_first  # ACE-Step's captioner/transcriber: "*Task* ...", a newline, then the audio
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.device = device
        self._audio_ids = [self._token_id(t) for t in (AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS)]
        expected = getattr(thinker.config, "audio_token_id", None)
        if expected is not None and self._audio_ids[1] != expected:
            raise CheckpointError(
                f"tokenizer maps {AUDIO_TOKEN} to {self._audio_ids[1]} but the model expects {expected}"
            )
        self._prefix_ids = self._encode(chat_prefix())
        self._end_ids = [i for i in (tokenizer.convert_tokens_to_ids(t) for t in END_TOKENS) if i is not None]

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        task_first: bool = False,
    ) -> QwenOmniBackend:
        """Load tokenizer, feature extractor and thinker from a folder or hub id (GPTQ when the config says so).

        `task_first` puts the instruction before the audio, the layout ACE-Step's own annotation models use.
        """
        from transformers import AutoTokenizer

        device = device or default_device()
        dtype = dtype or default_dtype(device)
        config = read_config(model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(model)
            feature_extractor = _feature_extractor(model, config)
            thinker = (
                _load_gptq(model, device) if is_gptq(config) else _load_thinker(model, config, device, dtype)
            )
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot load the captioning model {model}: {err}") from None
        return cls(thinker, tokenizer, feature_extractor, device, task_first=task_first)

    def ask(self, audio: np.ndarray, instruction: str, max_new_tokens: int) -> Answer:
        import torch

        features = self.feature_extractor(
            audio,
            sampling_rate=MODEL_SAMPLE_RATE,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="pt",
        )
        feature_mask = features["attention_mask"]
        n_audio = audio_token_count(int(feature_mask.sum()))
        ids = self.prompt_ids(n_audio, instruction)
        input_ids = torch.tensor([ids], device=self.device)
        dtype = next(p.dtype for p in self.thinker.parameters() if p.is_floating_point())
        try:
            with torch.inference_mode():
                output = self.thinker.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    input_features=features["input_features"].to(self.device, dtype),
                    feature_attention_mask=feature_mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=self._end_ids or None,
                    pad_token_id=self._end_ids[0] if self._end_ids else None,
                )
        except torch.cuda.OutOfMemoryError as err:
            raise BackendUnavailable(
                f"out of GPU memory while captioning ({err}); try the GPTQ model {GPTQ_MODEL}"
            ) from None
        generated = output[0, len(ids) :].tolist()
        stopped = bool(generated) and generated[-1] in self._end_ids
        truncated = len(generated) >= max_new_tokens and not stopped
        return Answer(self.tokenizer.decode(generated, skip_special_tokens=True), truncated=truncated)

    def prompt_ids(self, n_audio: int, instruction: str) -> list[int]:
        """The chat as token ids, with `n_audio` audio placeholders before (or after) the instruction."""
        bos, token, eos = self._audio_ids
        audio = [bos] + [token] * n_audio + [eos]
        if self.task_first:
            return self._prefix_ids + self._encode(instruction + "\n") + audio + self._encode(chat_suffix(""))
        return self._prefix_ids + audio + self._encode(chat_suffix(instruction))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise CheckpointError(
                f"the captioning tokenizer has no {token} token: not a Qwen2.5-Omni tokenizer"
            )
        return int(token_id)


def _feature_extractor(model: str, config: dict[str, Any]) -> Any:
    """The checkpoint's WhisperFeatureExtractor; Omni's published values when the folder has none."""
    from transformers import WhisperFeatureExtractor

    try:
        return WhisperFeatureExtractor.from_pretrained(model)
    except OSError:
        thinker = config.get("thinker_config", config)
        mel_bins = thinker.get("audio_config", {}).get("num_mel_bins", 128)
        return WhisperFeatureExtractor(feature_size=mel_bins, sampling_rate=MODEL_SAMPLE_RATE)


def _load_thinker(model: str, config: dict[str, Any], device: str, dtype: torch.dtype) -> torch.nn.Module:
    """The thinker from a thinker-only folder or from a full Omni checkpoint (its `thinker_config` part).

    The full Omni class is not used: generating with its talker switched off crashed in transformers 5.
    """
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": device}}  # straight to the GPU, no CPU copy
    if "thinker_config" in config:
        kwargs["config"] = Qwen2_5OmniThinkerConfig.from_dict(config["thinker_config"])
    return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(model, **kwargs)


def _load_gptq(model: str, device: str) -> torch.nn.Module:
    """GPTQ weights through gptqmodel (optional extra `gptq`), imported only here."""
    try:
        from gptqmodel import GPTQModel
    except ImportError:
        raise CheckpointError(MISSING_GPTQMODEL.format(model=model, default=DEFAULT_MODEL)) from None
    loaded = GPTQModel.load(model, device=device)
    full = getattr(loaded, "model", loaded)
    return getattr(full, "thinker", full)
