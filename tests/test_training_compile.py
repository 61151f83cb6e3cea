"""--compile: compiled blocks give the uncompiled loss and LoRA gradients (with LoRA, checkpointing and fp8), and
where compiling fails the run says so in one line and trains exactly as uncompiled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_helpers import synthetic_songs, tiny_transformer

from acestep.families.training import run_training
from acestep.families.v1.blocks import BLOCKS
from acestep.families.v1.models.configs import tiny_transformer_config
from acestep.families.v1.probe import TrainingStepProbe, random_transformer, synthetic_batch
from acestep.lora import LoraSettings, load_adapter
from acestep.training import TrainConfig
from acestep.training import compile as compile_module
from acestep.training.compile import compile_blocks, compile_works
from acestep.training.config import build_parser

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMER_ONLY = ROOT / "config" / "lora_config_transformer_only.json"
TINY = tiny_transformer_config()


def _failing_backend(graph_module, example_inputs):  # noqa: ANN001, ANN202
    raise RuntimeError("no compiler here\nsecond line of the compiler's output")


def _loss_and_grads(fp8: bool, backend: object = None, warn: list[str] | None = None,
                    check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    model = random_transformer(TINY, torch.bfloat16, "cpu")
    batch = synthetic_batch(TINY, 120, 1, 32, 16, True, "cpu")
    probe = TrainingStepProbe(model, LoraSettings.from_json(TRANSFORMER_ONLY), batch, fp8_base=fp8)
    if backend is not None:
        if not check:  # the compile check passes; the blocks' own first call is what fails
            compile_works_before = compile_module.compile_works
            compile_module.compile_works = lambda device, backend=None: None
        try:
            assert compile_blocks(BLOCKS.blocks(model), "cpu", backend=backend,
                                  warn=(warn if warn is not None else []).append)
        finally:
            if not check:
                compile_module.compile_works = compile_works_before
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero B factors, so the A factors get gradients too
        for param in probe.params:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    torch.manual_seed(0)  # the lyric encoder's dropout
    loss = probe.loss(seed=3)
    loss.backward()
    torch._dynamo.reset()
    return loss.detach(), torch.cat([p.grad.flatten() for p in probe.params])


def _assert_close(loss: torch.Tensor, grads: torch.Tensor, want_loss: torch.Tensor, want_grads: torch.Tensor) -> None:
    """Equal up to bf16 rounding: traced graphs decompose some ops, so sums round in another order."""
    assert abs(loss.item() - want_loss.item()) <= 1e-4 * abs(want_loss.item())
    assert torch.nn.functional.cosine_similarity(grads, want_grads, dim=0) > 0.9999
    assert (grads - want_grads).abs().max() <= 0.02 * want_grads.abs().max()
    assert want_grads.abs().sum() > 0


@pytest.mark.slow
def test_traced_blocks_keep_loss_and_lora_gradients_with_checkpointing_and_fp8():
    """The wiring (in-place block compile under checkpointing, PEFT and the fp8 autograd function), traced
    without code generation: the same graph as eager."""
    _assert_close(*_loss_and_grads(True, backend="aot_eager"), *_loss_and_grads(True))


@pytest.mark.slow
def test_inductor_compiled_blocks_match_uncompiled_with_lora_checkpointing_and_fp8():
    if compile_works("cpu") is not None:
        pytest.skip(f"torch.compile cannot build code here: {compile_works('cpu')}")
    loss, grads = _loss_and_grads(True)
    compiled_loss, compiled_grads = _loss_and_grads(True, backend="inductor")
    _assert_close(compiled_loss, compiled_grads, loss, grads)


def test_a_block_whose_first_compiled_call_fails_makes_all_blocks_run_eager():
    warnings: list[str] = []
    loss, grads = _loss_and_grads(False)
    fallback_loss, fallback_grads = _loss_and_grads(False, backend=_failing_backend, warn=warnings, check=False)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("--compile:") and warnings[0].endswith("training uncompiled")
    assert "no compiler here second line" in warnings[0]
    assert torch.equal(fallback_loss, loss) and torch.equal(fallback_grads, grads)


def test_compile_check_reports_a_failing_toolchain_in_one_line():
    reason = compile_works("cpu", backend=_failing_backend)
    assert reason is not None and "no compiler here" in reason and "\n" not in reason
    warnings: list[str] = []
    model = random_transformer(TINY, torch.bfloat16, "cpu")
    assert not compile_blocks(BLOCKS.blocks(model), "cpu", backend=_failing_backend, warn=warnings.append)
    assert len(warnings) == 1 and "cannot build code" in warnings[0]
    assert all(block._compiled_call_impl is None for block in model.transformer_blocks)


def _train(tmp_path: Path, name: str, compile_flag: bool) -> dict[str, torch.Tensor]:
    config = TrainConfig(dataset_path="in-memory", output_dir=str(tmp_path / "runs"), exp_name=name, max_steps=2,
                         every_n_train_steps=2, logger="none", progress_bar=False, compile=compile_flag)
    result = run_training(config, transformer=tiny_transformer(), dataset=synthetic_songs([40, 56]))
    assert result.steps == 2
    return load_adapter(result.adapter_dir)[0]


def test_trainer_without_a_working_compiler_warns_once_and_trains_as_uncompiled(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compile_module, "BACKEND", _failing_backend)
    compiled = _train(tmp_path, "compile", True)
    lines = [line for line in capsys.readouterr().err.splitlines() if "--compile" in line]
    assert len(lines) == 1 and lines[0].endswith("training uncompiled"), lines
    plain = _train(tmp_path, "plain", False)
    assert compiled.keys() == plain.keys()
    assert all(torch.equal(compiled[key], plain[key]) for key in plain)


def test_compile_is_off_by_default_and_its_help_says_why():
    assert TrainConfig(dataset_path="x").compile is False
    help_text = " ".join(build_parser().format_help().split())
    assert "--compile" in help_text and "Off by default until measured on a GPU" in help_text
