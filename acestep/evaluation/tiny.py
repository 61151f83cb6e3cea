"""Tiny random listening models in their published layouts, so tests and the demo run the real `from_pretrained`
code on CPU: a CLAP (ClapModel + ClapProcessor, as laion/larger_clap_music), a MERT (HubertModel weights with
the remote-code `mert_model` config, as m-a-p/MERT-v1-330M) and a whisper (WhisperForConditionalGeneration +
WhisperProcessor, as openai/whisper-*). `python -m acestep.evaluation.tiny OUT`.

They are random: their scores show the evaluation works, not whether music is good.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapProcessor,
    ClapTextConfig,
    GenerationConfig,
    HubertConfig,
    HubertModel,
    RobertaTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizerFast,
)

from acestep.core.atomic import build_into

CLAP_DIR = "clap"
MERT_DIR = "mert"
WHISPER_DIR = "whisper"
WHISPER_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>")
WORDS = ("pop rock jazz electronic hip hop rap classical ambient folk metal funk soul blues female male vocals piano "
         "guitar drums bass synth strings violin upbeat sad happy energetic calm dark dreamy melodic fast slow "
         "acoustic instrumental lights go on we move along sun is high sing with me rain on the window goodbye").split()


def _clap_tokenizer() -> RobertaTokenizerFast:
    """A byte-level BPE trained on a few music words, wrapped like the RoBERTa tokenizer of the real CLAP."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" ".join(WORDS)] * 10, trainer=trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return RobertaTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def write_tiny_clap(folder: Path) -> None:
    tokenizer = _clap_tokenizer()
    text = ClapTextConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=80, projection_dim=16)
    audio = ClapAudioConfig(depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16, hidden_size=32,
                            projection_dim=16, num_mel_bins=64, spec_size=256, window_size=8, enable_fusion=False)
    ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)).save_pretrained(
        str(folder))
    # the real checkpoint's extractor settings, minus the random crop (we embed fixed 10 s windows ourselves)
    extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(str(folder))


def write_tiny_mert(folder: Path, hidden: int = 32) -> None:
    config = HubertConfig(
        hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * hidden,
        conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, do_stable_layer_norm=True,
        feat_extract_norm="group", feat_proj_layer_norm=True, conv_bias=False,
    )
    HubertModel(config).save_pretrained(str(folder))
    path = folder / "config.json"  # the real MERT config names its remote-code class
    raw = json.loads(path.read_text(encoding="utf-8-sig"))
    raw.update(model_type="mert_model", architectures=["MERTModel"],
               auto_map={"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"})
    path.write_text(json.dumps(raw, indent=2), encoding="utf-8")


def write_tiny_whisper(folder: Path) -> None:
    """English-only whisper layout: byte-level BPE with whisper's special tokens, 80 mel bins, one layer each side."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(WHISPER_SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" ".join(WORDS)] * 10, trainer=trainer)
    end = "<|endoftext|>"
    fast = WhisperTokenizerFast(tokenizer_object=tokenizer, unk_token=end, bos_token=end, eos_token=end, pad_token=end)
    ids = {token: fast.convert_tokens_to_ids(token) for token in WHISPER_SPECIALS}
    special = {"pad_token_id": ids[end], "bos_token_id": ids[end], "eos_token_id": ids[end],
               "decoder_start_token_id": ids["<|startoftranscript|>"]}
    config = WhisperConfig(vocab_size=len(fast), num_mel_bins=80, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, d_model=32, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=64, suppress_tokens=[],
                           begin_suppress_tokens=[], **special)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=False,
                                               **special)
    model.save_pretrained(str(folder))
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=fast).save_pretrained(str(folder))


def write_tiny_eval_models(root: str | Path, seed: int = 0, overwrite: bool = False) -> tuple[Path, Path]:
    """(CLAP folder, MERT folder) under `root` (and whisper/ beside them), written in a staging folder first;
    byte-identical for a seed."""
    def build(staging: Path) -> None:
        torch.manual_seed(seed)
        write_tiny_clap(staging / CLAP_DIR)
        write_tiny_mert(staging / MERT_DIR)
        write_tiny_whisper(staging / WHISPER_DIR)

    root = build_into(Path(root), (CLAP_DIR, MERT_DIR, WHISPER_DIR), overwrite, build)
    return root / CLAP_DIR, root / MERT_DIR


def main(argv: list[str] | None = None) -> None:
    from acestep.core.cli_help import make_parser
    from acestep.core.errors import one_line_errors

    parser = make_parser("Write tiny random CLAP, MERT and whisper models for the evaluation (tests, demo).",
                         "python -m acestep.evaluation.tiny")
    parser.add_argument("out", help="output folder (gets clap/, mert/ and whisper/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--overwrite", action="store_true", help="replace models already in the folder")
    args = parser.parse_args(argv)
    with one_line_errors():
        clap, mert = write_tiny_eval_models(args.out, args.seed, args.overwrite)
    print(f"tiny CLAP written to {clap}, tiny MERT to {mert}, tiny whisper to {clap.parent / WHISPER_DIR}")


if __name__ == "__main__":
    main()
