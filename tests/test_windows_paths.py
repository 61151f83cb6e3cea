"""Windows-sensitive paths, tested on Linux: DataLoader workers started with `spawn` (Windows' only start
method), which must pickle the dataset and the collate function and re-import our modules in each worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import synthetic_songs

REPO = Path(__file__).resolve().parents[1]

TRAIN_UNDER_SPAWN = r"""
import multiprocessing, sys
if __name__ == "__main__":  # the workers re-import this file: keep their imports to the data code
    multiprocessing.set_start_method("spawn", force=True)
    from acestep.families.training import main
    for workers in ("0", "1"):
        main(["--dataset_path", sys.argv[1], "--checkpoint_dir", sys.argv[2], "--output_dir", sys.argv[3],
              "--exp_name", f"workers{workers}", "--num_workers", workers, "--max_steps", "2",
              "--every_n_train_steps", "2", "--batch_size", "2", "--no-progress_bar", "--logger", "none"])
    print("start method:", multiprocessing.get_start_method())
"""


@pytest.mark.slow
def test_training_with_spawned_data_workers_matches_the_in_process_loader(tmp_path: Path, tiny_checkpoint: Path) -> None:
    prep = tmp_path / "prep"
    synthetic_songs([40, 56, 48, 64]).save_to_disk(str(prep))
    script = tmp_path / "train_spawn.py"  # spawn re-imports the main module: it must be a file
    script.write_text(TRAIN_UNDER_SPAWN, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), str(prep), str(tiny_checkpoint), str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "start method: spawn" in done.stdout

    def losses(name: str) -> list[float]:
        lines = (tmp_path / "runs" / name / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["loss"] for line in lines]

    in_process, spawned = losses("workers0"), losses("workers1")
    # Same songs, same order; tensors from a worker's shared memory may round in another order (1e-7).
    assert len(in_process) == 2 and spawned == pytest.approx(in_process, rel=1e-5)
