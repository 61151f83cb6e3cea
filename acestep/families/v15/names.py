"""ACE-Step 1.5 module names: the original checkpoint's (`decoder.layers.0.self_attn.q_proj`) and diffusers'
(`layers.0.self_attn.to_q`), as diffusers' scripts/convert_ace_step_to_diffusers.py renames them.

One table for every user: checkpoint conversion (checkpoint.py), LoRA keys for ComfyUI and the official app
(lora_keys.py, export.py) and the LoRA tools' merge into an original checkpoint (through the ORIGINAL_DIT layout of
the package's TRANSFORMER).
"""

from __future__ import annotations

# (original, diffusers) inside a component; applied to every component (DiT, condition encoder, audio tokenizers)
ATTENTION_RENAMES = (
    (".q_proj.", ".to_q."),
    (".k_proj.", ".to_k."),
    (".v_proj.", ".to_v."),
    (".o_proj.", ".to_out.0."),
    (".q_norm.", ".norm_q."),
    (".k_norm.", ".norm_k."),
)
# the original DiT wraps its patch convolutions in nn.Sequential(Lambda, Conv, Lambda)
TRANSFORMER_RENAMES = (("proj_in.1.", "proj_in_conv."), ("proj_out.1.", "proj_out_conv."))
# original key prefix -> diffusers component of AceStepPipeline
COMPONENT_PREFIXES = (
    ("decoder.", "transformer"),
    ("encoder.", "condition_encoder"),
    ("tokenizer.", "audio_tokenizer"),
    ("detokenizer.", "audio_token_detokenizer"),
)
NULL_CONDITION = "null_condition_emb"  # top level in the original file, in condition_encoder for diffusers


def _renames(component: str) -> tuple[tuple[str, str], ...]:
    return ATTENTION_RENAMES + (TRANSFORMER_RENAMES if component == "transformer" else ())


def to_diffusers_name(name: str, component: str = "transformer") -> str:
    """A parameter/module name inside a component, original -> diffusers (prefix already stripped)."""
    for old, new in _renames(component):
        name = name.replace(old, new)
    return name


def to_original_name(name: str, component: str = "transformer") -> str:
    """The inverse of to_diffusers_name (diffusers -> original) inside a component."""
    for old, new in _renames(component):
        name = name.replace(new, old)
    return name
