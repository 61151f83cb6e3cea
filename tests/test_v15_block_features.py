"""ACE-Step 1.5 gets the trainer's block features as v1 has them: --base_dtype fp8, --gradient_checkpointing
all|none|auto|N and --compile, each acting on the blocks the family names and leaving the adapter's keys unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import short_run_config, write_lora_config
from v15_helpers import TINY_DIT, tiny_dit, tiny_null, v15_songs

from acestep.core.errors import AcestepError
from acestep.families.training import run_training
from acestep.families.v15.objective import TimestepSampler, V15Step
from acestep.families.v15.training import BLOCKS, V15Songs, collate_v15, training_parts
from acestep.lora import LoraSettings, load_adapter
from acestep.training import checkpointing as checkpointing_module
from acestep.training import compile as compile_module
from acestep.training import summary_text
from acestep.training.checkpointing import checkpoint_first_blocks
from acestep.training.compile import compile_blocks
from acestep.training.data import Draw
from acestep.training.fp8 import FP8_DTYPE, Fp8Linear, quantize_base
from acestep.training.model import adapter_state_dict, attach_lora

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LAYERS = TINY_DIT["num_hidden_layers"]


def _settings(r: int = 4) -> LoraSettings:
    return LoraSettings(r=r, lora_alpha=8.0, lora_dropout=0.0, target_modules=TARGETS)


def _batch() -> dict[str, Any]:
    songs = V15Songs(v15_songs([12, 12]))
    return collate_v15([songs[Draw(0, 0, 0)], songs[Draw(1, 0, 1)]])


def _model(dtype: torch.dtype = torch.float32, fp8: bool = False, checkpointed: int | None = 0) -> torch.nn.Module:
    """The tiny DiT with a LoRA whose B factors are non-zero (so every factor gets a gradient)."""
    model = tiny_dit(dtype=dtype)
    if fp8:
        quantize_base(model, dtype, BLOCKS.fp8_prefixes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        attach_lora(model, _settings(), "default")
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.05)
    checkpoint_first_blocks(model, BLOCKS.blocks(model), checkpointed)
    return model.train()


def _loss_and_grads(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict]:
    step = V15Step(TimestepSampler("turbo"), None, 0.0)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss, _ = step(model, _batch(), [torch.Generator().manual_seed(5 + i) for i in range(2)])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _count_checkpoints(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = checkpointing_module.checkpoint

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpointing_module, "checkpoint", counted)
    return calls


@pytest.mark.parametrize("count", [None, 1, 2])
def test_first_n_layers_checkpointed_give_the_uncheckpointed_loss_and_grads(count, monkeypatch) -> None:
    loss, grads = _loss_and_grads(_model(checkpointed=0))
    calls = _count_checkpoints(monkeypatch)
    model = _model(checkpointed=count)
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model)
    assert len(calls) == (LAYERS if count is None else count)
    assert torch.equal(checkpointed_loss, loss)
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        assert torch.equal(checkpointed_grads[name], grad), name
    assert all(g.abs().sum() > 0 for g in grads.values())
    # wrapped without renaming: the adapter's keys are those of the plain model
    assert adapter_state_dict(model, "default").keys() == adapter_state_dict(_model(checkpointed=0), "default").keys()
    with pytest.raises(AcestepError, match=f"the model has {LAYERS} blocks: cannot checkpoint {LAYERS + 1}"):
        checkpoint_first_blocks(tiny_dit(), BLOCKS.blocks(tiny_dit()), LAYERS + 1)


def test_fp8_dit_trains_with_lora_grads_close_to_bf16_and_the_same_keys() -> None:
    model = _model(torch.bfloat16, fp8=True, checkpointed=1)
    quantized = [name for name, m in model.named_modules() if isinstance(m, Fp8Linear)]
    assert any(name.startswith("layers.0.mlp.") for name in quantized)
    assert any(name.startswith("time_embed_r.") for name in quantized) and "condition_embedder" in quantized
    assert all(m.weight.dtype == FP8_DTYPE for m in model.modules() if isinstance(m, Fp8Linear))
    loss, grads = _loss_and_grads(model, torch.bfloat16)
    reference_loss, reference = _loss_and_grads(_model(torch.bfloat16, checkpointed=1), torch.bfloat16)
    assert abs(loss.item() - reference_loss.item()) <= 0.03 * reference_loss.item()
    flat, flat_ref = (torch.cat([g[n].float().flatten() for n in sorted(g)]) for g in (grads, reference))
    assert torch.nn.functional.cosine_similarity(flat, flat_ref, dim=0) > 0.99
    assert all(g.abs().sum() > 0 for g in grads.values())
    assert adapter_state_dict(model, "default").keys() == adapter_state_dict(_model(torch.bfloat16), "default").keys()


def _config(tmp_path: Path, **overrides: Any) -> Any:
    lora = write_lora_config(tmp_path, 4, lora_alpha=8.0, lora_dropout=0.0, target_modules=TARGETS)
    return short_run_config(tmp_path, **{"lora_config_path": lora, "max_steps": 2, "every_n_train_steps": 2,
                                         **overrides})


def _run(config: Any, dtype: torch.dtype = torch.float32) -> Any:
    model = tiny_dit(dtype=dtype)
    return run_training(config, parts=training_parts(config, model, tiny_null(), v15_songs([12, 10]), "tiny")), model


def test_trainer_fp8_run_saves_the_keys_of_a_16_bit_run(tmp_path: Path) -> None:
    fp8, model = _run(_config(tmp_path, exp_name="fp8", base_dtype="fp8"), torch.bfloat16)
    plain, _ = _run(_config(tmp_path, exp_name="bf16", base_dtype="bf16"), torch.bfloat16)
    assert fp8.steps == 2 and fp8.stopped is None
    assert sum(isinstance(m, Fp8Linear) for m in model.modules()) > 0
    fp8_tensors = load_adapter(fp8.adapter_dir / "adapter" / "adapter_model.safetensors")[0]
    plain_tensors = load_adapter(plain.adapter_dir / "adapter" / "adapter_model.safetensors")[0]
    assert fp8_tensors.keys() == plain_tensors.keys()
    assert all(torch.isfinite(t).all() for t in fp8_tensors.values())


def test_trainer_refuses_fp8_with_dora_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "dora").mkdir()
    dora = write_lora_config(tmp_path / "dora", 4, lora_alpha=8.0, target_modules=TARGETS, adapter_type="dora")
    with pytest.raises(AcestepError, match="adapter_type dora needs a 16-bit base"):
        _run(_config(tmp_path, base_dtype="fp8", lora_config_path=dora), torch.bfloat16)


def test_auto_checkpointing_asks_the_1_5_planner(tmp_path: Path) -> None:
    tight, model = _run(_config(tmp_path, exp_name="tight", gradient_checkpointing="auto", vram_gb=0.001,
                                max_duration=0.4))
    assert f"Gradient checkpointing auto: {LAYERS} of {LAYERS} blocks; even so the planner's" in summary_text(tight)
    roomy, _ = _run(_config(tmp_path, exp_name="roomy", gradient_checkpointing="auto", vram_gb=8.0,
                            max_duration=0.4))
    assert f"Gradient checkpointing auto: 0 of {LAYERS} blocks (the first ones), the fewest that fit 8 GB" \
        in summary_text(roomy)
    keys = [load_adapter(r.adapter_dir / "adapter" / "adapter_model.safetensors")[0].keys() for r in (tight, roomy)]
    assert keys[0] == keys[1]


def _failing_backend(graph_module, example_inputs):  # noqa: ANN001, ANN202
    raise RuntimeError("no compiler here")


def test_compiled_layers_keep_loss_grads_and_keys_with_fp8_and_checkpointing() -> None:
    """Traced per layer in place (aot_eager: the graph without code generation), under checkpointing and fp8."""
    loss, grads = _loss_and_grads(_model(torch.bfloat16, fp8=True, checkpointed=1), torch.bfloat16)
    model = _model(torch.bfloat16, fp8=True, checkpointed=1)
    names = [name for name, _ in model.named_modules()]
    warnings: list[str] = []
    try:
        assert compile_blocks(BLOCKS.blocks(model), "cpu", backend="aot_eager", warn=warnings.append)
        assert all(layer._compiled_call_impl is not None for layer in model.layers)
        compiled_loss, compiled_grads = _loss_and_grads(model, torch.bfloat16)
    finally:
        torch._dynamo.reset()
    assert warnings == []
    assert abs(compiled_loss.item() - loss.item()) <= 1e-3 * abs(loss.item())
    flat, flat_ref = (torch.cat([g[n].float().flatten() for n in sorted(g)]) for g in (compiled_grads, grads))
    assert torch.nn.functional.cosine_similarity(flat, flat_ref, dim=0) > 0.999
    assert [name for name, _ in model.named_modules()] == names


def test_trainer_compile_without_a_compiler_warns_once_and_trains_as_uncompiled(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compile_module, "BACKEND", _failing_backend)
    compiled, _ = _run(_config(tmp_path, exp_name="compiled", compile=True))
    lines = [line for line in capsys.readouterr().err.splitlines() if "--compile" in line]
    assert len(lines) == 1 and lines[0].endswith("training uncompiled"), lines
    plain, _ = _run(_config(tmp_path, exp_name="plain"))
    a, b = (load_adapter(r.adapter_dir / "adapter" / "adapter_model.safetensors")[0] for r in (compiled, plain))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_trainer_preset_is_planned_for_the_checkpoints_own_model(tiny_v15_checkpoint, tiny_checkpoint, layout):
    """trainer_new.py hands parse_config the family's planner request for --checkpoint_dir (both 1.5 layouts and
    v1): the preset names the model's own block count, never the published model's."""
    from acestep.families.training import parse_config, plan_model_for
    from acestep.families.v1.plan import PlanRequest
    from acestep.families.v15.plan import V15PlanRequest

    for checkpoint, kind in ((tiny_v15_checkpoint / layout, V15PlanRequest), (tiny_checkpoint, PlanRequest)):
        args = ["--dataset_path", "x", "--checkpoint_dir", str(checkpoint), "--preset", "6gb"]
        model = plan_model_for(parse_config(args[:4]))
        assert isinstance(model, kind) and model.block_count < 5
        config = parse_config(args, plan_model_for)
        assert f"of {model.block_count} blocks checkpointed" in config.preset_applied, config.preset_applied
        assert config.gradient_checkpointing == "auto" and config.vram_gb == 6.0
