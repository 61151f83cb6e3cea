"""generate.py's family layer: each family renders with its own pipeline (ACE-Step 1.5 through AceStepPipeline,
v1 through ours); a LoRA of the other family is refused in one line before any model is loaded. `load_renderer`
gives other tools (the regularization songs, acestep.reg_songs) every family's pipeline behind one call;
`load_lora_renderer` adds a switch that puts one LoRA file (or none) on the model at strength 1, for the evaluation
of a run's steps.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acestep.core.errors import AcestepError

if TYPE_CHECKING:
    from acestep.data.reg import Renderer


def main(argv: list[str] | None = None) -> None:
    """generate.py: the family of --checkpoint_dir (ACE-Step v1 without one) renders with its own pipeline."""
    argv = list(sys.argv[1:] if argv is None else argv)
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--checkpoint_dir")
    early.add_argument("--device")
    known, _ = early.parse_known_args(argv)
    try:
        if "-h" not in argv and "--help" not in argv:
            from acestep.core.cuda_check import check_cuda

            check_cuda("--device", known.device, "--device cpu")
        elif not known.checkpoint_dir:
            build_parser().parse_args(argv)  # plain --help: v1's flags and the 1.5 group, before any model code
        from acestep.families import V1, detect, get

        family = detect(known.checkpoint_dir) if known.checkpoint_dir else get(V1)
        if family.NAME == V1:
            if {"-h", "--help"} & set(argv):
                build_parser().parse_args(argv)  # prints the help with the 1.5 group and exits
            check_no_v15_flags(argv)
    except AcestepError as error:
        sys.exit(f"error: {error}")
    return family.generate_main(argv)


def build_parser() -> argparse.ArgumentParser:
    """v1's parser plus the 1.5-only flags in their own group: what plain `generate.py --help` shows."""
    from acestep.data.generate_cli import V15_GROUP, add_v15_only_arguments, v1_parser

    parser = v1_parser()
    parser.description = ("Generate music with ACE-Step v1 or 1.5 and optional LoRAs; an ACE-Step 1.5 "
                          "--checkpoint_dir switches to the 1.5 generator (its own --help lists only its flags).")
    add_v15_only_arguments(parser.add_argument_group(
        V15_GROUP, "used when --checkpoint_dir is a 1.5 checkpoint; --steps and --guidance_scale then default to the "
        "variant's (8 and 1.0 for turbo, 50 and 7.0 for base/sft)"))
    return parser


def check_no_v15_flags(argv: list[str]) -> None:
    """A 1.5-only flag with a v1 checkpoint is refused in one line rather than as argparse's "unrecognized"."""
    from acestep.data.generate_cli import V15_ONLY_FLAGS

    given = [flag for flag in V15_ONLY_FLAGS if any(a == flag or a.startswith(flag + "=") for a in argv)]
    if given:
        raise AcestepError(f"{', '.join(given)}: ACE-Step 1.5 flag(s); --checkpoint_dir is an ACE-Step v1 checkpoint "
                           "(or left out: the official v1 one)")


def load_renderer(checkpoint_dir: str | None, dit: str | None, device: str, dtype: str,
                  steps: int | None) -> tuple[str, Renderer]:
    """(family name, a renderer) for the checkpoint, each family with its own sampling defaults (`steps` None: the
    family's). Instrumental songs get the marker stage 3 encodes."""
    from acestep.families import resolve

    family, checkpoint = resolve(checkpoint_dir, dit)
    print(checkpoint.describe())
    return family.NAME, family.renderer(checkpoint, device, dtype, steps)


LoraSwitch = Callable[["str | Path | None"], None]


def load_lora_renderer(checkpoint_dir: str | None, dit: str | None, device: str, dtype: str,
                       steps: int | None) -> tuple[str, Renderer, LoraSwitch]:
    """`load_renderer` plus `use_lora(path)`: the LoRA file (or step folder) at strength 1 replaces the one before;
    None renders the base model again. A LoRA of the other family is refused in one line."""
    family, render, transformer = _load_pipeline(checkpoint_dir, dit, device, dtype, steps)
    return family, render, _lora_switch(transformer, family)


def _lora_switch(transformer: Any, family: str) -> LoraSwitch:
    from acestep.families import V15
    from acestep.lora.adapters import file_kind
    from acestep.lora.loading import load_loras

    loaded: list[str] = []
    original: dict[str, Any] = {}  # the base weights, kept once a DoRA / LoHa / LoKr file merges into them

    def use_lora(path: str | Path | None) -> None:
        if loaded:
            transformer.delete_adapters(list(loaded))
            loaded.clear()
        if original:
            transformer.load_state_dict(original, strict=False)
        if path is None:
            return
        if family == V15:
            from acestep.families.v15.generate import check_lora_family

            check_lora_family(path)
        else:
            from acestep.families.v1.generate import check_v1_loras

            check_v1_loras([str(path)])
        if file_kind(path) != "lora" and not original:
            original.update({k: v.detach().to("cpu", copy=True) for k, v in transformer.state_dict().items()})
        loaded.extend(load_loras(transformer, [(str(path), 1.0)]))

    return use_lora


def _load_pipeline(checkpoint_dir: str | None, dit: str | None, device: str, dtype: str,
                   steps: int | None) -> tuple[str, Renderer, Any]:
    """(family name, renderer, the transformer a LoRA goes on)."""
    from acestep.families import resolve

    family, checkpoint = resolve(checkpoint_dir, dit)
    print(checkpoint.describe())
    render, transformer = family.model_renderer(checkpoint, device, dtype, steps)
    return family.NAME, render, transformer
