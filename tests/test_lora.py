"""LoRA runs: only the adapter trains, checkpoints hold a PEFT adapter, resume continues it, and export merges it;
gradient checkpointing, with and without LoRA."""

import json
import warnings

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.modeling import load_policy, vision_towers
from dyme_cli.trainer import train

from conftest import small_recipe

runner = CliRunner()


def _lora_recipe(chart_data, run_dir, **train):
    recipe = small_recipe(chart_data, run_dir, **train)
    recipe.model.lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    recipe.model.freeze_vision = True
    return recipe


def test_a_lora_run_trains_only_the_adapter_and_saves_it(tmp_path, chart_data):
    run = tmp_path / "run"
    result = train(_lora_recipe(chart_data, run, max_steps=2))
    checkpoint = result.checkpoint
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert config["r"] == 4 and not (checkpoint / "model.safetensors").exists()
    assert config["base_model_name_or_path"] == str((run / "base-model").resolve())
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert not any("vision" in name for name in adapter)  # default targets: the language model only
    assert any("text_model" in name for name in adapter)
    # the B matrices start at zero; after training some are not
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)

    # PEFT loads it on the base, and dyme's loader merges it: same logits either way
    base = load_policy(str(run / "base-model"))
    peft_model = PeftModel.from_pretrained(base.model, checkpoint)
    merged = load_policy(str(checkpoint))
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        torch.testing.assert_close(merged.model(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


def test_resume_continues_the_adapter(tmp_path, chart_data):
    straight = train(_lora_recipe(chart_data, tmp_path / "a", max_steps=4))
    train(_lora_recipe(chart_data, tmp_path / "b", max_steps=4), max_steps=2)
    resumed = train(_lora_recipe(chart_data, tmp_path / "b", max_steps=4), resume=True)
    a = load_file(straight.checkpoint / "adapter_model.safetensors")
    b = load_file(resumed.checkpoint / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_frozen_vision_tower_does_not_change(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=2)
    recipe.model.freeze_vision = True
    result = train(recipe)
    before = load_policy(str(tmp_path / "run" / "base-model")).model
    after = load_policy(str(result.checkpoint)).model
    (tower_before,), (tower_after,) = vision_towers(before), vision_towers(after)
    for (name, p), (_, q) in zip(tower_before.named_parameters(), tower_after.named_parameters()):
        assert torch.equal(p, q), name
    changed = [n for (n, p), (_, q) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(p, q)]
    assert changed and not any("vision_model" in n for n in changed)


def test_export_merges_the_adapter(tmp_path, chart_data):
    result = train(_lora_recipe(chart_data, tmp_path / "run", max_steps=1))
    out = tmp_path / "merged"
    exported = runner.invoke(app, ["export", str(result.checkpoint), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        torch.testing.assert_close(load_policy(str(out)).model(input_ids=ids).logits,
                                   load_policy(str(result.checkpoint)).model(input_ids=ids).logits)
    again = runner.invoke(app, ["export", str(result.checkpoint), "--out", str(out)])
    assert again.exit_code == 2 and "is not empty" in again.output


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_gradient_checkpointing_is_turned_on_by_transformers_current_name(tiny_model_dir, lora):
    from dyme_cli.modeling import prepare_for_training
    from dyme_cli.recipe import ModelSection

    policy = load_policy(str(tiny_model_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated name on the way
        prepare_for_training(policy, ModelSection(name_or_path=str(tiny_model_dir), gradient_checkpointing=True,
                                                  lora=lora))
    assert policy.model.is_activation_checkpointing
