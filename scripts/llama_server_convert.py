"""Convert the tiny Qwen2.5-Omni test model to GGUF + mmproj with llama.cpp's own converter.

Run by scripts/llama_server_fixture.sh inside the converter's venv (its pins, our torch):

    python scripts/llama_server_convert.py LLAMA_CPP_DIR MODEL_DIR OUT_DIR

Two gaps of the tiny model are bridged here, never by editing the vendored converter:
- its tokenizer is trained on a few lines, so the converter does not know its pre-tokenizer hash: fall
  back to 'qwen2' (the same byte-level pre-tokenizer the real Qwen2.5-Omni uses);
- the mmproj carries the vision tower too, and the converter reads its normalisation from the image half
  of the preprocessor config, which a Whisper feature extractor does not write: add Qwen2.5-Omni's
  published image values (CLIP mean/std, 14 px patches, 2x2 merge).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

IMAGE_HALF = {
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "patch_size": 14,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "min_pixels": 3136,
    "max_pixels": 12845056,
}


def add_image_half(model: Path) -> None:
    path = model / "preprocessor_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**IMAGE_HALF, **config}, indent=2), encoding="utf-8")


def main() -> int:
    llama_cpp, model, out = (Path(arg).resolve() for arg in sys.argv[1:4])
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    import convert_hf_to_gguf
    from conversion.base import TextModel

    known = TextModel.get_vocab_base_pre

    def known_or_qwen2(self: TextModel, tokenizer: object) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            return "qwen2"

    TextModel.get_vocab_base_pre = known_or_qwen2
    add_image_half(model)
    out.mkdir(parents=True, exist_ok=True)
    for extra, name in (([], "tiny-omni.gguf"), (["--mmproj"], "mmproj-tiny-omni.gguf")):
        sys.argv = [
            "convert_hf_to_gguf.py",
            str(model),
            "--outtype",
            "f32",
            "--outfile",
            str(out / name),
            *extra,
        ]
        convert_hf_to_gguf.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
