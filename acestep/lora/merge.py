"""Add a LoRA at a strength into the transformer weights and save a plain checkpoint folder (no adapter needed).

W' = W + strength * scale * B @ A, computed in fp32 and stored in W's dtype (or the requested one). The input is
a checkpoint root (with a transformer sub-folder its family names), a transformer folder (config.json +
safetensors, sharded or not) or a single .safetensors file (config: --config, else the published one of the
family that has one). A checkpoint in a family's packed layout (one weights file holding the transformer beside
other models', e.g. ACE-Step 1.5's original DiT folder, or the root holding one such folder) is merged into a new
folder of that layout, the one its official app reads. Which layouts exist is each family's to say
(`acestep.lora.models.TransformerKind`).
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file

from acestep.core.atomic import atomic_write_text, make_readable, output_error, replace_folder, temp_sibling
from acestep.core.checkpoint_files import safetensors_problem
from acestep.core.errors import AcestepError, CheckpointError
from acestep.core.progress import progress

from .adapters import apply_adapter, file_kind, read_adapter
from .bake import module_scales
from .io import LoraFile, read_lora
from .keys import kohya_lookup_for
from .models import PackedLayout, default_kind, kind_for_config, packed_layouts, transformer_folders
from .settings import LoraSettings

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = WEIGHTS_FILE + ".index.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_transformer_weights(
    path: str | Path, config_path: str | Path | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) of a checkpoint root, a transformer folder or one .safetensors file."""
    path = Path(path)
    for subfolder in transformer_folders():
        if (path / subfolder).is_dir():
            path = path / subfolder
            break
    if path.is_dir():
        config_file = Path(config_path) if config_path else path / "config.json"
        if (path / INDEX_FILE).is_file():
            weight_map = json.loads((path / INDEX_FILE).read_text(encoding="utf-8-sig"))["weight_map"]
            files = [path / name for name in sorted(set(weight_map.values()))]
        elif (path / WEIGHTS_FILE).is_file():
            files = [path / WEIGHTS_FILE]
        else:
            raise CheckpointError(f"{path}: no {WEIGHTS_FILE} or {INDEX_FILE} in the transformer folder")
    elif path.is_file():
        config_file = Path(config_path) if config_path else None
        files = [path]
    else:
        raise CheckpointError(f"{path}: transformer checkpoint not found")
    config = read_config(config_file)
    state: dict[str, torch.Tensor] = {}
    for file in progress(files, desc="load", unit="file"):
        problem = safetensors_problem(file) if file.is_file() else "missing"
        if problem:
            raise CheckpointError(f"{file}: damaged weight file ({problem}); download or copy it again")
        try:
            state.update(load_file(str(file)))
        except Exception as error:  # noqa: BLE001 - safetensors raises several error types for bad files
            raise CheckpointError(f"{file}: not a readable safetensors file: {error}") from error
    if all(key.startswith("diffusion_model.") for key in state):  # a ComfyUI-style single file
        state = {key.removeprefix("diffusion_model."): value for key, value in state.items()}
    return config, state


def read_config(config_file: Path | None) -> dict:
    if config_file is None:
        kind = default_kind()
        return {"_class_name": kind.class_name, **kind.published_config()}
    try:
        return json.loads(config_file.read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_file}: cannot read the transformer config: {error}") from error


def merge_into(state: dict[str, torch.Tensor], lora: LoraFile, scales: dict[str, float], strength: float) -> None:
    """Add every module's delta to its weight in place; all modules are checked before anything changes."""
    for name, module in lora.modules.items():
        weight = state.get(f"{name}.weight")
        if weight is None:
            raise CheckpointError(f"{lora.path}: module {name} is not in the transformer checkpoint")
        if weight.flatten(1).shape != (module.up.shape[0], module.down.flatten(1).shape[1]):
            raise CheckpointError(f"{lora.path}: {name} is {tuple(weight.shape)} in the checkpoint, the LoRA "
                                  f"gives {module.up.shape[0]} x {module.down.flatten(1).shape[1]}")
    for name in progress(lora.modules, desc="merge", unit="module"):
        key = f"{name}.weight"
        weight = state[key]
        delta = lora.modules[name].delta(strength * scales[name]).reshape(weight.shape)
        state[key] = (weight.float() + delta).to(weight.dtype)


def is_transformer_folder(folder: Path) -> bool:
    """Only what save_transformer_folder writes: config.json and diffusion_pytorch_model safetensors shards."""
    return all(p.is_file() and (p.name == "config.json" or p.name.startswith("diffusion_pytorch_model"))
               for p in folder.iterdir())


def save_transformer_folder(state: dict[str, torch.Tensor], config: dict, out: Path, overwrite: bool) -> Path:
    """Write config.json + safetensors shards into a temp sibling, then rename it onto `out`.

    An existing `out` is replaced only with `overwrite` and only when it holds nothing but a transformer
    folder's files, so a mistyped output can never take other files with it.
    """
    if out.exists():
        if not out.is_dir() or not is_transformer_folder(out):
            raise AcestepError(f"{out}: exists and is not a transformer folder this tool wrote; refusing to replace "
                               "it (name a new output folder)")
        if not overwrite:
            raise AcestepError(f"{out}: already exists (pass --overwrite to replace it)")
    with folder_in_place_of(out) as temp:
        temp.mkdir()
        save_torch_state_dict(state, temp, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
                              max_shard_size="10GB", metadata={"format": "pt"})
        for shard in temp.iterdir():
            make_readable(shard)  # safetensors creates its files 0600
        atomic_write_text(temp / "config.json", json.dumps(config, indent=2) + "\n")
    return out


@contextmanager
def folder_in_place_of(out: Path) -> Iterator[Path]:
    """A temp sibling of `out` to fill; renamed onto `out` when the block ends, removed if it fails. A read-only,
    full or forbidden output says so in one line."""
    temp = temp_sibling(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        yield temp
        replace_folder(temp, out)
    except OSError as error:
        if isinstance(error, PermissionError) or error.errno in (errno.EROFS, errno.ENOSPC):
            raise output_error(out.parent, error) from error
        raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def merge_file(
    transformer: str | Path,
    lora_path: str | Path,
    out: str | Path,
    strength: float = 1.0,
    settings: LoraSettings | None = None,
    config_path: str | Path | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge `lora_path` at `strength` into the transformer and write a full transformer folder to `out`."""
    out = Path(out)
    source = Path(transformer).resolve()
    if out.resolve() in (source, *(source / folder for folder in transformer_folders())):
        raise AcestepError(f"{out}: write the merged model to a new folder, not over its source")
    packed = packed_folder(Path(transformer))
    if packed is not None:
        return merge_packed(*packed, lora_path, out, strength, settings, dtype, overwrite)
    config, state = load_transformer_weights(transformer, config_path)
    check_matches_config(config, state, Path(transformer))
    model_family = kind_for_config(config).family
    if dtype is not None:
        state = {key: value.to(DTYPES[dtype]) if value.is_floating_point() else value for key, value in state.items()}
    add_adapter(state, lora_path, model_family, strength, settings)
    return save_transformer_folder(state, config, out, overwrite)


def add_adapter(state: dict[str, torch.Tensor], lora_path: str | Path, model_family: str, strength: float,
                settings: LoraSettings | None) -> None:
    """Merge any adapter file into a transformer state dict (module names as the model's) in place."""
    modules = {key.removesuffix(".weight") for key in state if key.endswith(".weight")}
    lookup = kohya_lookup_for(modules)
    plain = file_kind(lora_path) == "lora"
    lora = read_lora(lora_path, kohya_lookup=lookup) if plain else read_adapter(
        lora_path, base_weight=lambda name: state[f"{name}.weight"], kohya_lookup=lookup)
    if lora.family is not None and lora.family != model_family:
        raise AcestepError(f"{lora.path}: an {lora.family} LoRA cannot be merged into an {model_family} transformer")
    if plain:
        merge_into(state, lora, module_scales(lora, settings), strength)
    else:  # DoRA / LoHa / LoKr: ComfyUI's rule at this strength
        missing = sorted(name for name in lora.modules if f"{name}.weight" not in state)
        if missing:
            raise CheckpointError(f"{lora.path}: module {missing[0]} is not in the transformer checkpoint")
        weights = {name: state[f"{name}.weight"] for name in lora.modules}
        state.update({f"{name}.weight": value for name, value in apply_adapter(weights, lora, strength).items()})


# ---- a packed layout: one file holds the transformer beside other models' weights (ACE-Step 1.5's original) ----


def packed_layout_of(folder: Path) -> tuple[str, PackedLayout] | None:
    """(family, layout) of a folder that holds every file marking one family's packed layout; None otherwise."""
    return next(((family, layout) for family, layout in packed_layouts()
                 if all((folder / name).is_file() for name in layout.marks)), None)


def packed_folder(path: Path) -> tuple[Path, str, PackedLayout] | None:
    """(folder, family, layout) of a packed-layout checkpoint: `path` itself, or its one such sub-folder; None for
    other inputs. Several such folders are refused: the user names one."""
    if not path.is_dir():
        return None
    here = packed_layout_of(path)
    found = {path: here} if here else {folder: layout for folder in sorted(path.iterdir())
                                       if folder.is_dir() and (layout := packed_layout_of(folder))}
    if len(found) > 1:
        first, (_, layout) = next(iter(found.items()))
        raise AcestepError(f"{path}: several {layout.folder}s ({', '.join(f.name for f in found)}); pass the one to "
                           f"merge into, e.g. {first}")
    return next(((folder, family, layout) for folder, (family, layout) in found.items()), None)


def merge_packed(source: Path, family: str, layout: PackedLayout, lora_path: str | Path, out: Path, strength: float,
                 settings: LoraSettings | None, dtype: str | None, overwrite: bool) -> Path:
    """Merge into the transformer inside a packed layout's weights file (its keys under the layout's prefix) and
    write a folder of that layout, the one its official app reads: the source folder's other files copied (config,
    code, buffers), the weights file merged (every other model's key as it was)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if out.exists():
        sources = {p.name for p in source.iterdir()}
        if not out.is_dir() or not {p.name for p in out.iterdir()} <= sources:
            raise AcestepError(f"{out}: exists and is not a {layout.folder} this tool wrote; refusing to replace it "
                               "(name a new output folder)")
        if not overwrite:
            raise AcestepError(f"{out}: already exists (pass --overwrite to replace it)")
    weights = source / layout.weights
    if problem := safetensors_problem(weights):
        raise CheckpointError(f"{weights}: damaged weight file ({problem}); download or copy it again")
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(weights))
    if dtype is not None:
        state = {key: value.to(DTYPES[dtype]) if value.is_floating_point() else value for key, value in state.items()}
    names = {layout.model_name(key.removeprefix(layout.prefix)): key for key in state if key.startswith(layout.prefix)}
    view = {name: state[key] for name, key in names.items()}
    add_adapter(view, lora_path, family, strength, settings)
    state.update({names[name]: value for name, value in view.items()})
    with folder_in_place_of(out) as temp:
        shutil.copytree(source, temp, ignore=shutil.ignore_patterns(layout.weights, "*.tmp*", ".*"))
        save_file(state, str(temp / layout.weights), metadata=metadata)
        make_readable(temp / layout.weights)
    return out


def check_matches_config(config: dict, state: dict[str, torch.Tensor], source: Path) -> None:
    """The weights must be exactly what the config builds, or the saved folder would not load."""
    model_class = kind_for_config(config).model_class()
    with torch.device("meta"):
        expected = model_class.from_config(config).state_dict()
    wrong = sorted(key for key in expected.keys() | state.keys()
                   if key not in state or key not in expected or expected[key].shape != state[key].shape)
    if wrong:
        raise CheckpointError(f"{source}: the weights do not match the transformer config "
                              f"({len(wrong)} keys differ, e.g. {', '.join(wrong[:3])}); pass the right --config")
