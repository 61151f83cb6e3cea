"""A tiny random Qwen2.5-Omni thinker in the real on-disk layout, for tests and the llama-server fixture.

Nothing is downloaded: a byte-level BPE tokenizer with Qwen's chat tokens is trained on a few lines, the
thinker is randomly initialised and saved with `save_pretrained`. Optionally the language model is wired
so that greedy decoding says a fixed `answer` and stops (or repeats it forever): attention and MLP
contribute nothing, so each position's logits depend on its own token only (a bigram model), which makes
the answer deterministic in transformers and in llama.cpp alike.

    python -m acestep.captioning.tiny_omni DIR [--answer TEXT] [--repeat] [--full_omni]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from acestep.core.cli_help import make_parser
from acestep.core.quiet import library_bars_off

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
]
CORPUS = [
    "rock, pop, electric guitar, drums, piano, upbeat, female vocal, male vocal, energetic, slow, fast",
    "[verse] hello world, I sing for you [chorus] la la la, yeah",
    "system user assistant You are Qwen describe this music with short tags transcribe the lyrics",
]
MEL_BINS = 16
SPARE_IDS = 8  # room past the tokenizer for the image/video ids the config needs
LOGIT = 10.0  # the wired answer's logit margin; every other logit is 0


def tiny_thinker_config(vocab_size: int) -> Any:
    """1-layer text model (hidden 32), 1-layer audio and vision encoders; special ids from SPECIAL_TOKENS."""
    from transformers import Qwen2_5OmniThinkerConfig

    ids = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    return Qwen2_5OmniThinkerConfig(
        audio_config={
            "num_mel_bins": MEL_BINS,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "d_model": 16,
            "output_dim": 32,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [0],
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        },
        audio_token_index=ids["<|AUDIO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        image_token_index=vocab_size - 2,
        video_token_index=vocab_size - 1,
        vision_start_token_id=vocab_size - 3,
        vision_end_token_id=vocab_size - 4,
    )


@library_bars_off()  # a "Writing model shards" bar per tiny file says nothing
def write_tiny_qwen_omni(
    folder: Path,
    silent_head: bool = False,
    answer: str | None = None,
    repeat: bool = False,
    full_omni: bool = False,
) -> Path:
    """Tokenizer, Whisper feature extractor and thinker in `folder`; returns `folder`.

    silent_head: every logit is 0, so greedy decoding picks token 0 (<|endoftext|>): an empty answer.
    answer: greedy decoding says exactly this text, then <|im_end|> (or, with `repeat`, says it forever).
    full_omni: the published Omni layout (config with `thinker_config`, weights under `thinker.`), which
    llama.cpp's converter expects.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Qwen2_5OmniThinkerForConditionalGeneration,
        Qwen2TokenizerFast,
        WhisperFeatureExtractor,
    )

    from acestep.captioning.clips import MODEL_SAMPLE_RATE

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS * 5, trainer)
    if answer is not None:
        bpe.add_tokens([answer])  # one token, so a bigram model can say it
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=MODEL_SAMPLE_RATE).save_pretrained(folder)
    torch.manual_seed(0)
    model = Qwen2_5OmniThinkerForConditionalGeneration(tiny_thinker_config(bpe.get_vocab_size() + SPARE_IDS))
    text = model.model.language_model
    with torch.no_grad():
        if silent_head:
            text.norm.weight.zero_()
        if answer is not None:
            _wire_answer(text, model.lm_head, bpe.token_to_id(answer), bpe.token_to_id("<|im_end|>"), repeat)
    if full_omni:
        _save_full_omni(model, folder)
    else:
        model.save_pretrained(folder)
    return folder


def _wire_answer(text: torch.nn.Module, head: torch.nn.Linear, said: int, end: int, repeat: bool) -> None:
    """Any token -> `said`; `said` -> <|im_end|> (or -> `said` again when `repeat`)."""
    layer = text.layers[0]
    layer.self_attn.o_proj.weight.zero_()
    layer.mlp.down_proj.weight.zero_()
    text.norm.weight.fill_(1.0)
    hidden = text.embed_tokens.weight.shape[1]
    other, answered = torch.zeros(hidden), torch.zeros(hidden)
    other[0], answered[1] = 1.0, 1.0
    text.embed_tokens.weight.copy_(other.expand_as(text.embed_tokens.weight))
    text.embed_tokens.weight[said] = answered
    head.weight.zero_()
    head.weight[said] = LOGIT * (other + answered if repeat else other)
    if not repeat:
        head.weight[end] = LOGIT * answered


def _save_full_omni(model: torch.nn.Module, folder: Path) -> None:
    """config.json with `thinker_config` and weights prefixed `thinker.`, as Qwen/Qwen2.5-Omni-7B ships them."""
    from safetensors.torch import load_file, save_file

    thinker_config = model.config.to_dict()
    config = {
        "model_type": "qwen2_5_omni",
        "architectures": ["Qwen2_5OmniModel"],
        "thinker_config": thinker_config,
        "enable_audio_output": False,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    model.save_pretrained(folder / "_thinker")
    weights = load_file(folder / "_thinker" / "model.safetensors")
    save_file({"thinker." + key: value for key, value in weights.items()}, folder / "model.safetensors")
    for path in (folder / "_thinker").iterdir():
        path.unlink()
    (folder / "_thinker").rmdir()


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("Write a tiny random Qwen2.5-Omni thinker (tests, llama-server fixture).",
                         "python -m acestep.captioning.tiny_omni")
    parser.add_argument("folder", type=Path, help="new folder to write the model into")
    parser.add_argument("--answer", default=None, help="text greedy decoding says (default: random answers)")
    parser.add_argument("--repeat", action="store_true", help="say --answer forever instead of stopping")
    parser.add_argument("--full_omni", action="store_true", help="published Omni layout (for the converter)")
    args = parser.parse_args(argv)
    if args.folder.exists() and any(args.folder.iterdir()):
        parser.error(f"{args.folder} is not empty; give a new folder")
    write_tiny_qwen_omni(args.folder, answer=args.answer, repeat=args.repeat, full_omni=args.full_omni)
    print(args.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
