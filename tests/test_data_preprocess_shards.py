"""Preprocessing on several GPUs: two concurrent `--shard i/2` processes into one folder, then `--merge`, give
the dataset of a single-process run, tensor for tensor (sha256)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_helpers import write_audio

from acestep.data import preprocess
from acestep.data.filenames import build_filename_dataset
from acestep.data.preprocessed import load_preprocessed

ROOT = Path(__file__).resolve().parents[1]


def tensor_digests(prep: Path) -> list[dict[str, str]]:
    """Per song, the sha256 of every tensor column (bytes, dtype and shape) and the plain columns as text."""
    rows = []
    for row in load_preprocessed(prep):
        digests = {}
        for name, value in row.items():
            if isinstance(value, torch.Tensor):
                data = value.contiguous().numpy().tobytes()
                digests[name] = hashlib.sha256(data + f"{value.dtype}{tuple(value.shape)}".encode()).hexdigest()
            else:
                digests[name] = repr(value)
        rows.append(digests)
    return rows


@pytest.mark.slow
def test_two_concurrent_shards_then_merge_equal_one_process(tmp_path: Path, tiny_checkpoint: Path) -> None:
    songs = tmp_path / "songs"
    for i, seconds in enumerate([1.0, 1.4, 0.8, 1.2, 1.1]):
        write_audio(songs / f"song{i}.wav", seconds, 44100, 2, freq=180 * (i + 1))
        (songs / f"song{i}_prompt.txt").write_text(f"genre{i}, piano, drums, calm", encoding="utf-8")
        (songs / f"song{i}_lyrics.txt").write_text(f"[verse]\nla la {i}\n", encoding="utf-8")
    filenames = tmp_path / "filenames"
    build_filename_dataset(songs, filenames)
    common = ["--input_name", str(filenames), "--checkpoint_dir", str(tiny_checkpoint), "--device", "cpu",
              "--dtype", "float32", "--max_duration", "2", "--num_workers", "0"]

    sharded = tmp_path / "sharded"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "preprocess_dataset_new.py")
    workers = [subprocess.Popen([sys.executable, script, *common, "--output_dir", str(sharded), "--shard", f"{i}/2"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in (0, 1)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    preprocess.main([*common, "--output_dir", str(sharded), "--merge"])

    single = tmp_path / "single"  # the same thread count as the shards: CPU kernels sum in a per-thread order
    subprocess.run([sys.executable, script, *common, "--output_dir", str(single)], env=env, check=True,
                   capture_output=True, timeout=300)
    merged, reference = tensor_digests(sharded), tensor_digests(single)
    assert len(reference) == 5 and {"target_latents", "encoder_text_hidden_states", "lyric_token_ids"} <= set(
        reference[0])
    assert merged == reference
