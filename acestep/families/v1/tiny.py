"""ACE-Step v1's tiny random checkpoint in the published layout, so tests and the demo run every real loading path
on CPU (`python -m acestep.tiny_checkpoint OUT` writes one)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderDC
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import HubertConfig, HubertModel, T5TokenizerFast, UMT5Config, UMT5EncoderModel

from acestep.core.atomic import build_into
from acestep.core.quiet import library_bars_off
from acestep.families.v1.lyrics import write_tiny_lyric_vocab
from acestep.families.v1.models import ACEStepTransformer2DModel
from acestep.families.v1.models.configs import tiny_transformer_config
from acestep.families.v1.models.dcae import tiny_dcae_config
from acestep.families.v1.models.vocoder import ADaMoSHiFiGANV1, tiny_vocoder_config

TEXT_WIDTH = 32
TOKENIZER_TEXT = (
    "pop, rock, jazz, electronic, hip hop, rap, classical, ambient, folk, country, metal, funk, soul, blues, "
    "female vocals, male vocals, piano, guitar, drums, bass, synth, strings, violin, saxophone, trumpet, "
    "upbeat, sad, happy, energetic, calm, dark, dreamy, melodic, fast, slow, acoustic, instrumental, lo-fi"
).split(", ")


def _train_text_tokenizer(folder: Path) -> None:
    """A small Unigram tokenizer wrapped as a T5 fast tokenizer, saved like the real umt5-base files."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tokenizer.train_from_iterator(TOKENIZER_TEXT * 20, trainer=trainer)
    fast = T5TokenizerFast(tokenizer_object=_settled(tokenizer), eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0)
    fast.save_pretrained(str(folder))


def _settled(tokenizer: Tokenizer, special: int = 3, digits: int = 8) -> Tokenizer:
    """The trained Unigram vocabulary made the same on every run: the trainer's threads sum the scores in
    another order each time (they differ in the last bits) and tied pieces come out in another order, which
    changed the prompt ids and so every trained LoRA. Scores are rounded and ties ordered by the piece."""
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    pieces = sorted(((piece, round(score, digits)) for piece, score in vocab[special:]), key=lambda p: (-p[1], p[0]))
    data["model"]["vocab"] = [[piece, score] for piece, score in vocab[:special] + pieces]
    return Tokenizer.from_str(json.dumps(data))


def _write_hubert(folder: Path, hidden: int, mert_layout: bool) -> None:
    config = HubertConfig(
        hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * hidden,
        conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, do_stable_layer_norm=mert_layout,
        feat_extract_norm="group", feat_proj_layer_norm=True, conv_bias=False,
    )
    HubertModel(config).save_pretrained(str(folder))
    if mert_layout:  # the real MERT config names a remote-code class; our loader must cope with it
        path = folder / "config.json"
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
        raw.update(model_type="mert_model", architectures=["MERTModel"],
                   auto_map={"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"})
        path.write_text(json.dumps(raw, indent=2))


COMPONENTS = ("lyric_tokenizer", "ace_step_transformer", "music_dcae_f8c8", "music_vocoder", "umt5-base", "mert",
              "mhubert", "README.json")


def write_tiny_checkpoint(root: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write every component (random weights) into `root`; built in a temp folder, then moved into place.

    Existing components are replaced only with `overwrite` (a real checkpoint in `root` is never touched
    by accident); other files in `root` always stay.
    """
    return build_into(Path(root), COMPONENTS, overwrite, lambda staging: _write_components(staging, seed))


@library_bars_off()  # a "Writing model shards" bar per tiny file says nothing
def _write_components(staging: Path, seed: int) -> None:
    """Random weights of every component, in the published layout."""
    torch.manual_seed(seed)
    vocab_size = write_tiny_lyric_vocab(staging / "lyric_tokenizer" / "vocab.json")
    transformer = ACEStepTransformer2DModel(
        **tiny_transformer_config(lyric_encoder_vocab_size=vocab_size, text_embedding_dim=TEXT_WIDTH)
    )
    transformer.save_pretrained(str(staging / "ace_step_transformer"))
    AutoencoderDC(**tiny_dcae_config()).save_pretrained(str(staging / "music_dcae_f8c8"))
    ADaMoSHiFiGANV1(**tiny_vocoder_config()).save_pretrained(str(staging / "music_vocoder"))
    umt5 = UMT5EncoderModel(UMT5Config(
        vocab_size=200, d_model=TEXT_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    ))
    umt5.save_pretrained(str(staging / "umt5-base"))
    _train_text_tokenizer(staging / "umt5-base")
    _write_hubert(staging / "mert", 32, mert_layout=True)
    _write_hubert(staging / "mhubert", 24, mert_layout=False)
    (staging / "README.json").write_text(json.dumps({
        "what": "tiny random ACE-Step v1 checkpoint for tests and the demo; it makes noise, not music",
        "layout": "ACE-Step/ACE-Step-v1-3.5B", "seed": seed,
    }, indent=2))
