"""Tiny ACE-Step 1.5 parts for tests: a diffusers DiT and null condition at toy size, and stored songs."""

from __future__ import annotations

import datasets
import torch

TINY_DIT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, in_channels=192, audio_acoustic_hidden_dim=64, sliding_window=8,
                encoder_hidden_size=32)


def tiny_dit(seed: int = 0, is_turbo: bool = True, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from diffusers import AceStepTransformer1DModel

    torch.manual_seed(seed)
    return AceStepTransformer1DModel(**TINY_DIT, is_turbo=is_turbo, model_version="turbo" if is_turbo else "base").to(
        dtype)


def tiny_null(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 1, TINY_DIT["encoder_hidden_size"], generator=torch.Generator().manual_seed(seed + 7))


def v15_songs(lengths: list[int], tokens: int = 6, seed: int = 0) -> datasets.Dataset:
    """Rows in the stored 1.5 layout (float16): a per-song timbre held over time plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, list] = {"target_latents": [], "context_latents": [], "encoder_hidden_states": [],
                             "encoder_attention_mask": []}
    for index, frames in enumerate(lengths):
        timbre = 2.0 * torch.randn(1, 64, generator=generator)  # strong: most of the loss is learnable
        latents = timbre + 0.1 * torch.randn(frames, 64, generator=generator)
        context = torch.cat([torch.randn(1, 64, generator=generator).expand(frames, 64), torch.ones(frames, 64)], -1)
        rows["target_latents"].append(latents.half().numpy())
        rows["context_latents"].append(context.half().numpy())
        rows["encoder_hidden_states"].append(torch.randn(tokens + index, 32, generator=generator).half().numpy())
        rows["encoder_attention_mask"].append(torch.ones(tokens + index).half().numpy())
    features = datasets.Features({
        "target_latents": datasets.Array2D((None, 64), "float16"),
        "context_latents": datasets.Array2D((None, 128), "float16"),
        "encoder_hidden_states": datasets.Array2D((None, 32), "float16"),
        "encoder_attention_mask": datasets.Sequence(datasets.Value("float16")),
    })
    return datasets.Dataset.from_dict(rows, features=features).with_format("torch")


_PRETRAINED: dict[int, dict[str, torch.Tensor]] = {}


def pretrained_tiny_dit(steps: int = 40, seed: int = 0) -> torch.nn.Module:
    """A tiny DiT first trained in full on random songs, so that, like the published model, it already denoises.

    A random toy DiT cannot pass a frame's noise through its narrow stream; a LoRA on its attention then has
    too little to work with to show learning. Trained weights are cached for the session.
    """
    from acestep.families.v15.objective import TimestepSampler, V15Step
    from acestep.families.v15.training import V15Songs, collate_v15
    from acestep.training.data import Draw

    model = tiny_dit(seed)
    if seed not in _PRETRAINED:
        songs = V15Songs(v15_songs([16] * 8, seed=seed + 100))
        step = V15Step(TimestepSampler("logit_normal"), None, 0.0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
        for index in range(steps):
            batch = collate_v15([songs[Draw((index * 4 + k) % len(songs), index, index)] for k in range(2)])
            loss, _ = step(model, batch, [torch.Generator().manual_seed(seed * 1000 + 2 * index + k) for k in range(2)])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        _PRETRAINED[seed] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(_PRETRAINED[seed])
    return model
