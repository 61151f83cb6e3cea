"""ACE-Step 1.5 XL (4B): a DiT wider than its condition encoder (published: 2560 vs 2048), and a timbre encoder that
reads its learned special token first.

The official XL modeling files (modeling_acestep_v15_xl_{turbo,base}.py, AceStepTimbreEncoder.forward) put
`special_token` in front of the embedded reference frames, and the timbre embedding is the encoder's output at that
token. The 2B files have the same line commented out. diffusers 0.42.1's AceStepConditionEncoder follows the 2B:
it loads the token (`timbre_encoder.special_token`, the checkpoint's `encoder.timbre_encoder.special_token`) but
never uses it, so for an XL checkpoint its timbre embedding is another vector than the one the model was trained
with. add_timbre_token makes a loaded diffusers encoder compute the official XL formula; the weights are the
checkpoint's own, the class and its saved files stay diffusers'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: checkpoint.py imports this and resolves folders without torch
    import torch

TOKEN_FLAG = "acestep_prepends_special_token"  # set on a timbre encoder that add_timbre_token changed


def is_xl_config(config: dict[str, Any]) -> bool:
    """An XL DiT config: its condition encoder (`encoder_hidden_size`) is narrower than the DiT (`hidden_size`).

    Both layouts say it: the original config.json and diffusers' transformer/config.json carry both widths."""
    width = config.get("encoder_hidden_size")
    return width is not None and width != config.get("hidden_size")


class _PrependToken:
    """Forward hook on the timbre encoder's `embed_tokens`: [N, T, D] -> [N, 1 + T, D] with the token first, so the
    rest of diffusers' forward (positions, masks, layers, output at position 0) runs on the official sequence.
    A callable object rather than a closure, so a deep copy of the encoder hooks its own timbre encoder."""

    def __init__(self, timbre_encoder: torch.nn.Module) -> None:
        self.timbre_encoder = timbre_encoder

    def __call__(self, _module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        import torch

        token = self.timbre_encoder.special_token.to(output.dtype).expand(output.shape[0], 1, -1)
        return torch.cat([token, output], dim=1)


def add_timbre_token(condition_encoder: torch.nn.Module) -> torch.nn.Module:
    """Make a diffusers AceStepConditionEncoder of an XL checkpoint prepend the timbre special token (once)."""
    timbre = condition_encoder.timbre_encoder
    if not getattr(timbre, TOKEN_FLAG, False):
        timbre.embed_tokens.register_forward_hook(_PrependToken(timbre))
        setattr(timbre, TOKEN_FLAG, True)
    return condition_encoder
