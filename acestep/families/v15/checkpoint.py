"""ACE-Step 1.5 checkpoints in both published layouts, loaded into diffusers' own classes.

- diffusers layout (`AceStepPipeline.from_pretrained`): model_index.json, transformer/, condition_encoder/, vae/,
  text_encoder/, tokenizer/ (e.g. `ACE-Step/acestep-v15-xl-turbo-diffusers`);
- original layout (`ACE-Step/Ace-Step1.5`): a DiT folder (acestep-v15-turbo/, -base/, -sft/, any `--dit`) with
  model.safetensors, config.json and silence_latent.pt, next to vae/ and Qwen3-Embedding-0.6B/. It is converted
  in memory by the key rules of diffusers' scripts/convert_ace_step_to_diffusers.py (names.py).
An XL checkpoint (condition encoder narrower than the DiT) gets the official XL timbre formula (xl.py) in both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acestep.core.checkpoint_files import DEFAULT_CACHE, download_snapshot, safetensors_problem
from acestep.core.dependencies import require_diffusers_for_v15
from acestep.core.errors import CheckpointError
from acestep.core.quiet import library_bars_off, old_weight_norm

from .files import DIFFUSERS_PARTS, DIT_FILES, DIT_WEIGHTS, TEXT_ENCODER_FOLDER, TRANSFORMER_FOLDER
from .layout import contiguous_residual_stream
from .lora_keys import NAME
from .names import COMPONENT_PREFIXES, NULL_CONDITION, to_diffusers_name, to_original_name
from .xl import add_timbre_token, is_xl_config

if TYPE_CHECKING:  # annotations only: resolving a checkpoint (generate.py --help) loads no torch
    import torch

DEFAULT_DIT = "acestep-v15-turbo"
ORIGINAL_REPO = "ACE-Step/Ace-Step1.5"
# original config.json -> AceStepTransformer1DModel / AceStepConditionEncoder arguments (converter's rules)
SHARED_CONFIG = (
    "head_dim", "rope_theta", "attention_bias", "attention_dropout", "rms_norm_eps", "sliding_window",
)
TRANSFORMER_CONFIG = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "in_channels", "audio_acoustic_hidden_dim", "patch_size", "layer_types", *SHARED_CONFIG,
)
ENCODER_CONFIG = (
    "text_hidden_dim", "timbre_hidden_dim", "num_lyric_encoder_hidden_layers", "num_timbre_encoder_hidden_layers",
    *SHARED_CONFIG,
)


@dataclass(frozen=True)
class V15Checkpoint:
    """A resolved 1.5 checkpoint. `dit` is the DiT folder of the original layout (None for diffusers)."""

    root: Path
    layout: str  # "diffusers" | "original"
    variant: str  # "turbo" | "base" | "sft" | ... (model_version, or "turbo" when is_turbo)
    dit: Path | None = None
    family: str = NAME

    @property
    def is_turbo(self) -> bool:
        return self.variant == "turbo"

    @property
    def is_xl(self) -> bool:
        """The DiT config names a narrower condition encoder (XL); read from the DiT's config.json."""
        config = self.dit / "config.json" if self.dit is not None else self.root / TRANSFORMER_FOLDER / "config.json"
        return is_xl_config(_read_json(config))

    def describe(self) -> str:
        if self.layout == "diffusers":
            where = "diffusers layout (model_index.json, transformer/, condition_encoder/, vae/, text_encoder/)"
        else:
            assert self.dit is not None
            where = (
                f"original layout ({self.dit.name}/ + vae/ + {TEXT_ENCODER_FOLDER}/, converted to diffusers "
                "classes in memory)"
            )
        size = " XL" if self.is_xl else ""
        return f"checkpoint: {NAME}{size} {self.variant}, {where} in {self.root}"


def _is_dit_folder(files: set[str], prefix: str = "") -> bool:
    return all(prefix + name in files for name in DIT_FILES)


def dit_folders(files: set[str]) -> list[str]:
    """Sub-folders of a listing that hold a DiT (model.safetensors + config.json + silence_latent.pt)."""
    folders = {name.split("/")[0] for name in files if "/" in name}
    return sorted(f for f in folders if _is_dit_folder(files, f + "/"))


def recognizes(files: set[str]) -> bool:
    """A 1.5 checkpoint in either layout (a listing two levels deep, or a hub repo's file list)."""
    diffusers = "model_index.json" in files and any(f.split("/")[0] == "condition_encoder" for f in files)
    return diffusers or bool(dit_folders(files)) or _is_dit_folder(files)


def _variant(config: dict[str, Any]) -> str:
    version = config.get("model_version")
    if version:
        return str(version)
    return "turbo" if config.get("is_turbo") else "base"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable ({error})") from None


def _resolve_diffusers(root: Path) -> V15Checkpoint:
    missing = [f"{part}/" for part in DIFFUSERS_PARTS if not (root / part).is_dir()]
    if missing:
        raise CheckpointError(f"{root}: diffusers-format ACE-Step 1.5 checkpoint is missing {', '.join(missing)}")
    config = _read_json(root / TRANSFORMER_FOLDER / "config.json")
    return V15Checkpoint(root=root, layout="diffusers", variant=_variant(config))


def _resolve_original(root: Path, dit: str | None) -> V15Checkpoint:
    if dit is None and _is_dit_folder({p.name for p in root.iterdir()}):
        root, dit = root.parent, root.name  # --checkpoint_dir named the DiT folder itself
    if dit is None:
        found = dit_folders({f"{p.parent.name}/{p.name}" for p in root.glob("*/*")})
        if DEFAULT_DIT in found or not found:
            dit = DEFAULT_DIT
        elif len(found) == 1:
            dit = found[0]
        else:
            raise CheckpointError(f"{root}: several DiT folders ({', '.join(found)}); choose one with --dit")
    dit_dir = root / dit
    missing = [f"{dit}/{name}" for name in DIT_FILES if not (dit_dir / name).is_file()]
    missing += [f"{name}/" for name in ("vae", TEXT_ENCODER_FOLDER) if not (root / name).is_dir()]
    if missing:
        raise CheckpointError(
            f"{root}: ACE-Step 1.5 checkpoint (original layout) is missing {', '.join(missing)}. "
            f"Get it from https://huggingface.co/{ORIGINAL_REPO}"
        )
    return V15Checkpoint(root=root, layout="original", variant=_variant(_read_json(dit_dir / "config.json")),
                         dit=dit_dir)


def dit_config(checkpoint: V15Checkpoint) -> dict[str, Any]:
    """The DiT's config.json: the original layout's DiT folder, or the diffusers layout's transformer/."""
    folder = checkpoint.dit if checkpoint.dit is not None else checkpoint.root / TRANSFORMER_FOLDER
    return _read_json(folder / "config.json")


def _download(repo_id: str) -> Path:
    """The repo's snapshot in the shared cache (v1's downloader: one cache, one error line)."""
    return download_snapshot(repo_id, DEFAULT_CACHE)


def resolve(checkpoint_dir: str | Path | None, dit: str | None = None) -> V15Checkpoint:
    """A local folder or hub repo id in either layout; `dit` picks the DiT folder of the original layout."""
    require_diffusers_for_v15()
    if checkpoint_dir is None:
        raise CheckpointError("ACE-Step 1.5 needs --checkpoint_dir (a folder or a repo id)")
    root = Path(checkpoint_dir).expanduser()
    if not root.is_dir():
        root = _download(str(checkpoint_dir))
    if (root / "model_index.json").is_file():
        if dit is not None:
            raise CheckpointError(f"{root}: --dit applies to the original layout; this is a diffusers-format folder")
        checkpoint = _resolve_diffusers(root)
    else:
        checkpoint = _resolve_original(root, dit)
    check_weight_files(checkpoint)
    return checkpoint


def weight_files(checkpoint: V15Checkpoint) -> list[Path]:
    """Every .safetensors file the checkpoint's models load (shards included)."""
    if checkpoint.layout == "diffusers":
        folders = [checkpoint.root / part for part in DIFFUSERS_PARTS]
        return [f for folder in folders for f in sorted(folder.glob("*.safetensors"))]
    assert checkpoint.dit is not None
    folders = [checkpoint.root / "vae", checkpoint.root / TEXT_ENCODER_FOLDER]
    return [checkpoint.dit / DIT_WEIGHTS, *(f for folder in folders for f in sorted(folder.glob("*.safetensors")))]


def check_weight_files(checkpoint: V15Checkpoint) -> None:
    """One line naming each weight file that is cut short or unreadable (header and size only, no loading), as
    v1 does: generate, stage 3 and the trainer would otherwise fail with a SafetensorError traceback."""
    damaged = [f"{file} ({problem})" for file in weight_files(checkpoint) if (problem := safetensors_problem(file))]
    if damaged:
        raise CheckpointError(
            f"damaged weight file(s), probably an interrupted download or copy: {'; '.join(damaged)}. "
            "Download or copy those files again"
        )


# ---- conversion of the original layout (key rules of diffusers' converter) ----


def original_to_diffusers(state: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Split an original model.safetensors into {component: state dict} with diffusers names; returns the
    components and the keys no component takes (the converter drops them too)."""
    components: dict[str, dict[str, torch.Tensor]] = {name: {} for _, name in COMPONENT_PREFIXES}
    unused = []
    for key, value in state.items():
        if key == NULL_CONDITION:
            components["condition_encoder"][NULL_CONDITION] = value
            continue
        for prefix, component in COMPONENT_PREFIXES:
            if key.startswith(prefix):
                components[component][to_diffusers_name(key[len(prefix):], component)] = value
                break
        else:
            unused.append(key)
    return components, unused


def diffusers_to_original(components: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The inverse of original_to_diffusers (the silence_latent buffer is stored apart, as silence_latent.pt)."""
    state: dict[str, torch.Tensor] = {}
    for prefix, component in COMPONENT_PREFIXES:
        for key, value in components.get(component, {}).items():
            if component == "condition_encoder" and key == NULL_CONDITION:
                state[NULL_CONDITION] = value
            elif not (component == "condition_encoder" and key == "silence_latent"):
                state[prefix + to_original_name(key, component)] = value
    return state


def component_configs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Constructor arguments of the diffusers classes from an original config.json (the converter's rules,
    including the XL's narrower condition encoder: encoder_hidden_size etc.)."""
    encoder = {
        "hidden_size": config.get("encoder_hidden_size", config["hidden_size"]),
        "intermediate_size": config.get("encoder_intermediate_size", config["intermediate_size"]),
        "num_attention_heads": config.get("encoder_num_attention_heads", config["num_attention_heads"]),
        "num_key_value_heads": config.get("encoder_num_key_value_heads", config["num_key_value_heads"]),
    }
    shared = {key: config[key] for key in SHARED_CONFIG}
    pooler_layers = config.get("num_attention_pooler_hidden_layers", 2)
    pooler = {
        **encoder, **shared,
        "audio_acoustic_hidden_dim": config["audio_acoustic_hidden_dim"],
        "pool_window_size": config.get("pool_window_size", 5),
        "num_attention_pooler_hidden_layers": pooler_layers,
        "layer_types": config["layer_types"][:pooler_layers],
    }
    return {
        "transformer": {
            **{key: config[key] for key in TRANSFORMER_CONFIG},
            "encoder_hidden_size": encoder["hidden_size"],
            "is_turbo": bool(config.get("is_turbo", False)),
            "model_version": config.get("model_version"),
        },
        "condition_encoder": {**{key: config[key] for key in ENCODER_CONFIG}, **encoder},
        "audio_tokenizer": {
            **pooler,
            "fsq_dim": config.get("fsq_dim", encoder["hidden_size"]),
            "fsq_input_levels": config.get("fsq_input_levels", [8, 8, 8, 5, 5, 5]),
            "fsq_input_num_quantizers": config.get("fsq_input_num_quantizers", 1),
        },
        "audio_token_detokenizer": pooler,
    }


def read_silence_latent(dit_dir: Path) -> torch.Tensor:
    """silence_latent.pt is stored [1, C, T]; diffusers (and generation) use it as [1, T, C]."""
    path = dit_dir / "silence_latent.pt"
    try:
        import torch

        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path}: damaged ({type(error).__name__}); download or copy it again") from None
    return raw.transpose(1, 2).contiguous()


def _component_classes() -> dict[str, type]:
    from diffusers import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )

    return {
        "transformer": AceStepTransformer1DModel,
        "condition_encoder": AceStepConditionEncoder,
        "audio_tokenizer": AceStepAudioTokenizer,
        "audio_token_detokenizer": AceStepAudioTokenDetokenizer,
    }


def load_original_components(
    checkpoint: V15Checkpoint, names: tuple[str, ...], dtype: torch.dtype
) -> dict[str, torch.nn.Module]:
    """The named DiT-file components of an original-layout checkpoint as diffusers modules (strict loading)."""
    from safetensors.torch import load_file

    assert checkpoint.dit is not None
    configs = component_configs(_read_json(checkpoint.dit / "config.json"))
    components, _ = original_to_diffusers(load_file(checkpoint.dit / DIT_WEIGHTS))
    components["condition_encoder"]["silence_latent"] = read_silence_latent(checkpoint.dit)
    classes = _component_classes()
    modules = {}
    for name in names:
        try:
            module = _module_holding(classes[name], configs[name], components[name])
        except RuntimeError as error:
            raise CheckpointError(f"{checkpoint.dit}: {name} weights do not match its config.json ({error})") from None
        modules[name] = module.to(dtype).eval()
    return ready_for_use(checkpoint, modules)


def _module_holding(cls: type, config: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`cls(**config)` whose weights are the loaded tensors themselves (built on the meta device, strict `assign`):
    no random initialisation and no float32 copy of the model in RAM beside the file's (a 4B DiT: 16 GB). A module
    with buffers computed at construction rather than stored is built for real and loaded by copy."""
    import torch

    with torch.device("meta"):
        module = cls(**config)
    stored = set(module.state_dict())
    if all(name in stored for name, _ in module.named_buffers()):
        module.load_state_dict(state, strict=True, assign=True)
        return module
    module = cls(**config)
    module.load_state_dict(state, strict=True)
    return module


def ready_for_use(checkpoint: V15Checkpoint, modules: dict[str, Any]) -> dict[str, Any]:
    """An XL checkpoint's condition encoder prepends the timbre special token, as the official XL code (xl.py);
    the DiT runs on a row-major residual stream (layout.py)."""
    if modules.get("condition_encoder") is not None and checkpoint.is_xl:
        add_timbre_token(modules["condition_encoder"])
    if modules.get("transformer") is not None:
        contiguous_residual_stream(modules["transformer"])
    return modules


@library_bars_off()  # the command's own "checkpoint: ..." line says what is loaded
def load_components(
    checkpoint: V15Checkpoint, names: tuple[str, ...], dtype: torch.dtype | None = None
) -> dict[str, torch.nn.Module]:
    """transformer / condition_encoder / audio_tokenizer / audio_token_detokenizer from either layout (dtype None:
    float32)."""
    import torch

    dtype = dtype or torch.float32
    if checkpoint.layout == "original":
        return load_original_components(checkpoint, names, dtype)
    classes = _component_classes()
    return ready_for_use(checkpoint, {
        name: classes[name].from_pretrained(checkpoint.root / name, dtype=dtype).eval() for name in names
    })


def _load_vae(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderOobleck

    with old_weight_norm():
        return AutoencoderOobleck.from_pretrained(folder, dtype=dtype).eval()


@library_bars_off()  # the command's own "checkpoint: ..." line says what is loaded
def load_pipeline(
    checkpoint: V15Checkpoint, dtype: torch.dtype | None = None, with_transformer: bool = True
) -> Any:
    """An AceStepPipeline from either layout (diffusers: `from_pretrained`; original: converted in memory).

    Without the transformer (stage 3 only encodes) the DiT's weights are never read; dtype None: float32."""
    import torch
    from diffusers import AceStepPipeline, FlowMatchEulerDiscreteScheduler
    from transformers import AutoModel, AutoTokenizer

    dtype = dtype or torch.float32

    if checkpoint.layout == "diffusers":
        skip = {} if with_transformer else {"transformer": None}
        with old_weight_norm():  # the Oobleck VAE
            pipe = AceStepPipeline.from_pretrained(checkpoint.root, dtype=dtype, **skip)
        ready_for_use(checkpoint, {"condition_encoder": pipe.condition_encoder, "transformer": pipe.transformer})
        return pipe
    names = ("transformer", "condition_encoder") if with_transformer else ("condition_encoder",)
    modules = load_original_components(checkpoint, names, dtype)
    text_dir = checkpoint.root / TEXT_ENCODER_FOLDER
    return AceStepPipeline(
        vae=_load_vae(checkpoint.root / "vae", dtype),
        text_encoder=AutoModel.from_pretrained(text_dir, dtype=dtype).eval(),
        tokenizer=AutoTokenizer.from_pretrained(text_dir),
        transformer=modules.get("transformer"),
        condition_encoder=modules["condition_encoder"],
        # ACE-Step computes its own [0, 1] sigma schedule; the converter registers this scheduler
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
    )
