"""Stage 2 + 3 for ACE-Step 1.5 on the tiny checkpoint: the stored conditioning is exactly what AceStepPipeline
feeds the transformer for the same prompt, lyrics, metadata and duration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from data_helpers import write_audio

from acestep import families
from acestep.core.errors import AcestepError
from acestep.data.filenames import build_filename_dataset
from acestep.data.preprocess import FilenameRow, RunOptions, run_song_stages
from acestep.data.preprocessed import dataset_family, load_preprocessed
from acestep.families.v15.checkpoint import load_pipeline
from acestep.families.v15.encode import V15Settings, V15SongStages, looks_like_prose

LYRICS = "[verse]\nsun is high\nsing with me\n\n[chorus]\noh oh oh"


@pytest.fixture(scope="module")
def pipe(tiny_v15_checkpoint: Path):
    from diffusers import AceStepPipeline

    return AceStepPipeline.from_pretrained(tiny_v15_checkpoint / "diffusers")  # the generator's own loading


@pytest.fixture(scope="module")
def filenames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    songs = tmp_path_factory.mktemp("songs")
    write_audio(songs / "a.wav", seconds=3.43, sr=44100, channels=1, freq=330.0)
    (songs / "a_prompt.txt").write_text("acoustic, guitar, happy", encoding="utf-8")
    (songs / "a_lyrics.txt").write_text(LYRICS, encoding="utf-8")
    (songs / "a_bpm_key.json").write_text(json.dumps({"bpm": 121.6, "key": "A minor", "timesignature": "4",
                                                      "language": "en"}), encoding="utf-8")
    write_audio(songs / "b.flac", seconds=1.5, freq=220.0)  # no sidecars: instrumental, metadata unknown
    out = tmp_path_factory.mktemp("filenames") / "ds"
    summary = build_filename_dataset(songs, out)
    assert summary.with_bpm_key == 1 and "with bpm/key:          1" in "\n".join(summary.lines(""))
    return out


def stages(pipe, store: str = "outputs", tag_order: str = "as_written") -> V15SongStages:
    from acestep.audio import prepare_training_audio
    from acestep.data.tags import format_prompt

    settings = V15Settings(tag_order=tag_order, condition_store=store)
    return V15SongStages(pipe, settings, format_prompt, lambda p, s: prepare_training_audio(p, max_duration=s))


def spy_transformer_inputs(pipe, **call) -> dict[str, torch.Tensor]:
    """Run a real generation and record what the transformer receives at its first step."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, _args, kwargs):
        if not seen:
            seen.update({k: kwargs[k].clone() for k in ("encoder_hidden_states", "context_latents", "hidden_states")})

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe(num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0), **call)
    finally:
        handle.remove()
    return seen


PROSE = ("A warm acoustic ballad led by fingerpicked guitar", "with a soft female voice. The mood is calm and "
         "intimate, building gently towards the end.")
TAGS = ("pop", "rock", "female vocals", "120 bpm", "upbeat", "synth", "bass", "drums")


def test_prose_is_told_from_tag_lists() -> None:
    assert looks_like_prose(PROSE) and looks_like_prose(("An upbeat pop track driven by bright synths and a beat",))
    assert not looks_like_prose(TAGS) and not looks_like_prose(("Dr. Dre style", "feat. someone", "hip hop"))


def test_captions_stay_as_written_by_default_and_shuffle_never_cuts_prose(
    pipe, tiny_v15_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from acestep.data.preprocess import parse_args
    from acestep.families.v15 import checkpoint as v15_checkpoint
    from acestep.families.v15.encode import song_stages_from_args

    args = parse_args(["--input_name", "x", "--output_dir", "y", "--device", "cpu", "--dtype", "float32"])
    assert args.tag_order is None and V15Settings().tag_order == "as_written"
    default = song_stages_from_args(v15_checkpoint.resolve(tiny_v15_checkpoint / "original"), args)
    assert default.settings.tag_order == "as_written"
    rows = [FilenameRow(f"s{i}", f"/music/s{i}.wav", tags, "") for i, tags in enumerate((PROSE, TAGS, PROSE))]
    written = [default.prepare(i, row).text.caption for i, row in enumerate(rows)]
    assert written == [", ".join(PROSE), ", ".join(TAGS), ", ".join(PROSE)]
    shuffling = stages(pipe, tag_order="shuffle")
    captions = [shuffling.prepare(i, row).text.caption for i, row in enumerate(rows)]
    assert captions[0] == captions[2] == ", ".join(PROSE)  # kept as written
    assert captions[1] != ", ".join(TAGS) and sorted(captions[1].split(", ")) == sorted(TAGS)  # a tag list: shuffled
    lines = [line for line in capsys.readouterr().out.splitlines() if "reads as sentences" in line]
    assert lines == ["s0.wav: the caption reads as sentences, so it is kept as written (--tag_order shuffle "
                     "reorders tag lists only; the same for every such caption)"]
    assert shuffling.prose_kept == 2


def test_a_long_prose_caption_is_not_cut_at_v1s_character_limit(tiny_v15_checkpoint: Path) -> None:
    from acestep.data.preprocess import MAX_PROMPT_CHARS, parse_args
    from acestep.families.v15 import checkpoint as v15_checkpoint
    from acestep.families.v15.encode import song_stages_from_args

    prose = ("A slow, warm ballad opens on a felt piano and a soft brushed kit. A breathy female voice sings close to "
             "the microphone while a cello answers each line. Halfway through, strings swell, the drums open up, and "
             "the last chorus lifts a key before everything falls back to the piano alone.")
    assert len(prose) > MAX_PROMPT_CHARS
    args = parse_args(["--input_name", "x", "--output_dir", "y", "--device", "cpu", "--dtype", "float32"])
    stages = song_stages_from_args(v15_checkpoint.resolve(tiny_v15_checkpoint / "original"), args)
    assert stages.prepare(0, FilenameRow("s0", "/music/s0.wav", [prose], "")).text.caption == prose


def test_stage2_carries_music_metadata(filenames: Path) -> None:
    import datasets

    rows = datasets.load_from_disk(str(filenames)).to_list()
    a, b = sorted(rows, key=lambda r: r["keys"])
    assert (a["bpm"], a["keyscale"], a["timesignature"], a["language"]) == (121.6, "A minor", "4", "en")
    assert (b["bpm"], b["keyscale"], b["timesignature"], b["language"]) == (-1, "", "", "")


@pytest.mark.slow
def test_stored_conditioning_equals_what_generation_feeds(pipe, filenames: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    result = run_song_stages(filenames, prep, stages(pipe), RunOptions(show_progress=False))
    assert result.encoded == 2 and result.new_errors == []
    assert dataset_family(prep) == "ace-step-1.5" and result.manifest["family"] == "ace-step-1.5"
    assert result.manifest["settings"]["condition_store"] == "outputs"
    data = load_preprocessed(prep)
    song = data[0]
    assert song["keys"] == "a" and song["bpm"] == 122 and song["keyscale"] == "A minor"
    frames = int(song["latent_length"])
    assert frames == 85 and song["target_latents"].shape == (frames, 8)
    assert song["context_latents"].shape == (frames, 16)
    assert "- bpm: 122\n- timesignature: 4\n- keyscale: A minor\n- duration: 3 seconds" in song["text_prompt"]
    seen = spy_transformer_inputs(
        pipe, prompt=song["prompt"], lyrics=song["lyrics"], audio_duration=frames / 25,
        vocal_language="en", bpm=122, keyscale="A minor", timesignature="4",
    )
    assert seen["hidden_states"].shape[1] == frames
    for column in ("encoder_hidden_states", "context_latents"):
        expected = seen[column][0].to(torch.float16).float()
        assert song[column].shape == expected.shape
        assert torch.equal(song[column], expected), column
    assert bool(song["encoder_attention_mask"].all())
    # the instrumental song without metadata: "[Instrumental]" lyrics and N/A metadata, as the pipeline's defaults
    other = data[1]
    assert other["lyrics"] == "[Instrumental]" and "- bpm: N/A" in other["text_prompt"]
    seen = spy_transformer_inputs(pipe, prompt=other["prompt"], lyrics="[Instrumental]",
                                  audio_duration=int(other["latent_length"]) / 25, vocal_language="unknown")
    assert torch.equal(other["encoder_hidden_states"], seen["encoder_hidden_states"][0].half().float())


@pytest.mark.slow
def test_inputs_store_reproduces_the_outputs(pipe, filenames: Path, tmp_path: Path) -> None:
    """With --condition_store inputs the trainer runs the condition encoder itself; it must get the same states."""
    from acestep.families.v15.encode import silent_timbre_reference

    run_song_stages(filenames, tmp_path / "out", stages(pipe), RunOptions(show_progress=False))
    run_song_stages(filenames, tmp_path / "in", stages(pipe, "inputs"), RunOptions(show_progress=False))
    cached, raw = load_preprocessed(tmp_path / "out")[0], load_preprocessed(tmp_path / "in")[0]
    assert "encoder_hidden_states" not in raw and "text_hidden_states" in raw
    assert torch.equal(cached["target_latents"], raw["target_latents"])  # the latent sample is seeded by row
    reference, order = silent_timbre_reference(pipe)
    with torch.no_grad():
        states, _ = pipe.condition_encoder(
            raw["text_hidden_states"][None], raw["text_attention_mask"][None].bool(),
            raw["lyric_hidden_states"][None], raw["lyric_attention_mask"][None].bool(), reference, order,
        )
    assert torch.allclose(states[0], cached["encoder_hidden_states"], atol=2e-2)


def test_family_layer_refuses_a_v1_dataset_folder(tiny_v15_checkpoint: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    prep.mkdir()
    (prep / "manifest.json").write_text(json.dumps({"family": "ace-step-v1"}), encoding="utf-8")
    args = argparse.Namespace(checkpoint_dir=str(tiny_v15_checkpoint / "original"), dit=None, output_dir=prep)
    with pytest.raises(families.FamilyMismatch, match="ace-step-v1, but --checkpoint_dir is ace-step-1.5"):
        families.song_stages_for_args(args)


@pytest.mark.slow
def test_original_layout_encodes_like_the_diffusers_layout(tiny_v15_checkpoint: Path, filenames, tmp_path) -> None:
    _, checkpoint = families.resolve(tiny_v15_checkpoint / "original")
    original = load_pipeline(checkpoint, with_transformer=False)
    run_song_stages(filenames, tmp_path / "o", stages(original), RunOptions(show_progress=False))
    _, converted = families.resolve(tiny_v15_checkpoint / "diffusers")
    diffusers_pipe = load_pipeline(converted, with_transformer=False)
    run_song_stages(filenames, tmp_path / "d", stages(diffusers_pipe), RunOptions(show_progress=False))
    a, b = load_preprocessed(tmp_path / "o")[0], load_preprocessed(tmp_path / "d")[0]
    for column in ("target_latents", "encoder_hidden_states", "context_latents"):
        assert torch.equal(a[column], b[column])


def test_published_size_storage_is_what_the_shapes_say(tmp_path: Path) -> None:
    from acestep.families.v15.sizing import TEXT_TOKENS, TIMBRE_TOKENS, measure_bytes_per_second

    disk, raw = measure_bytes_per_second(60.0, "outputs", tmp_path / "o")
    length = TEXT_TOKENS + 600 + TIMBRE_TOKENS
    expected = (1500 * 64 + 1500 * 128 + length * 2048) * 2 + length  # float16 matrices, int8 mask
    assert raw == pytest.approx(expected / 60.0)
    assert raw <= disk < 1.05 * raw
    smaller, _ = measure_bytes_per_second(60.0, "inputs", tmp_path / "i")
    assert smaller < disk  # 1024-wide inputs instead of 2048-wide outputs


@pytest.mark.slow
def test_stage3_cli_picks_the_family_from_the_checkpoint(
    tiny_v15_checkpoint: Path, filenames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from acestep.families.preprocess import main

    prep = tmp_path / "prep"
    argv = ["--input_name", str(filenames), "--output_dir", str(prep), "--checkpoint_dir",
            str(tiny_v15_checkpoint / "original"), "--device", "cpu", "--dtype", "float32", "--num_workers", "0"]
    main([*argv, "--condition_store", "inputs"], song_stages=families.song_stages_for_args)
    out = capsys.readouterr().out
    assert "checkpoint: ace-step-1.5 turbo, original layout" in out and "2 songs encoded" in out
    manifest = json.loads((prep / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["family"] == "ace-step-1.5" and manifest["settings"]["condition_store"] == "inputs"
    assert manifest["settings"]["tag_order"] == "as_written"  # 1.5's default: prose captions as written
    with pytest.raises(SystemExit, match="condition_store: 'inputs' -> 'outputs'"):  # a resume must repeat it
        main(argv, song_stages=families.song_stages_for_args)


@pytest.mark.slow
def test_long_songs_are_encoded_in_tiles_that_join_seamlessly(pipe) -> None:
    """VAE tiles give the latents of one whole encode (up to float rounding: the tiny VAE's receptive field is
    shorter than the overlap), so a 6-minute song fits a small GPU without changing what is stored."""
    from acestep.families.v15.encode import PreparedV15Song, SongText

    wav = torch.randn(2, 3 * 48000, generator=torch.Generator().manual_seed(1)) * 0.1
    text = SongText(caption="pop", lyrics="[Instrumental]", language="en")
    whole = V15SongStages(pipe, V15Settings(), None, None).encode_song(PreparedV15Song(0, "k", "f", text, wav))
    overlap = pipe.vae.tile_sample_overlap
    pipe.vae.tile_sample_overlap = 23040  # 12 frames each side (2 s as published) keeps the test short
    try:
        with pytest.raises(AcestepError, match="whole latent frames"):
            V15SongStages(pipe, V15Settings(vae_tile_seconds=1.5), None, None)  # 13.5-frame cores
        tiled_stages = V15SongStages(pipe, V15Settings(vae_tile_seconds=2.0), None, None)  # 26-frame cores
        tiled = tiled_stages.encode_song(PreparedV15Song(0, "k", "f", text, wav))
        assert pipe.vae.use_tiling and pipe.vae.tile_sample_min_length == 2 * 48000
    finally:
        pipe.vae.tile_sample_overlap = overlap
        V15SongStages(pipe, V15Settings(), None, None)  # back to 30 s tiles for the other tests
    assert whole.tensors["target_latents"].shape == tiled.tensors["target_latents"].shape == (75, 8)
    assert torch.allclose(whole.tensors["target_latents"], tiled.tensors["target_latents"], atol=1e-5)
