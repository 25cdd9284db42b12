"""DeepSpeed on the CPU side: the export and the vLLM weight sync gather ZeRO-3's partitioned parameters, the
gradient norm comes from DeepSpeed's engine (``p.grad`` is ``None`` under ZeRO), and a ``max_grad_norm`` that
DeepSpeed would ignore is refused. DeepSpeed needs CUDA under Lightning, so it cannot run here: a stand-in
keeps ZeRO-3's contract for one process (a partitioned parameter holds an empty tensor and a ``ds_id``; inside
``GatheredParameters`` it holds fresh full values, which are overwritten when the block ends), put in place of
``lit_rl.export.gathered_parameters``, and the
strategies are built without their ``__init__``, which refuses to run without DeepSpeed installed."""

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy

from lit_rl.distributed import check_clipping, deepspeed_grad_norm, shards_parameters
from lit_rl.export import adapter_weights, export_pretrained, is_sharded, merged_state_dict
from lit_rl.policy import LoraSettings, Policy

from test_lora import probe


class Zero3StandIn:
    """``deepspeed.zero`` for one process: partitions a model's parameters and gathers them back, read-only."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.full = {p: p.data.clone() for p in model.parameters()}
        self.gathers = 0
        for i, p in enumerate(model.parameters()):
            p.ds_id, p.data = i, torch.empty(0, dtype=p.dtype)

    @contextmanager
    def gathered_parameters(self, params):                              # read-only: nothing is written back
        params = list(params)
        for p in params:
            p.data = self.full[p].clone()
        self.gathers += 1
        yield
        for p in params:
            p.data.fill_(float("nan"))                                  # the gathered buffers are reused
            p.data = torch.empty(0, dtype=p.dtype)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_zero3_partitioned_policy_exports_its_full_weights(tiny_model_dir, tmp_path, monkeypatch, lora):
    torch.manual_seed(0)
    policy = Policy.load(tiny_model_dir, lora=LoraSettings(r=4, alpha=8) if lora else None)
    if lora:
        with torch.no_grad():
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.normal_()
    expected, args = merged_state_dict(policy.model), probe(policy)
    trained = policy.logps(*args)[0].detach()
    zero = Zero3StandIn(policy.model)
    monkeypatch.setattr("lit_rl.export.gathered_parameters", zero.gathered_parameters)
    assert is_sharded(policy.model) and all(p.numel() == 0 for p in policy.model.parameters())
    state = merged_state_dict(policy.model)
    adapter = adapter_weights(policy.model) if lora else None           # on every rank, as on_train_end does
    assert zero.gathers == 1 + lora and set(state) == set(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name                    # copied out before the gather ended
    assert all(p.numel() == 0 for p in policy.model.parameters())      # partitioned again
    export_pretrained(policy.model, policy.tokenizer, tmp_path / "hf_model", state, adapter)
    loaded = Policy.load(str(tmp_path / "hf_model")).model.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in expected.items())
    if lora:                                                            # base + adapter through PEFT
        adapter_policy = Policy.load(str(tmp_path / "hf_model" / "adapter"))
        assert_close(adapter_policy.logps(*args)[0].detach(), trained, rtol=0, atol=1e-5)


def strategy(cls, **attributes):
    """A Lightning strategy object without its ``__init__`` (DeepSpeed's refuses to run without DeepSpeed)."""
    out = cls.__new__(cls)
    out.__dict__.update(attributes)
    return out


def test_the_gradient_norm_under_deepspeed_is_its_engines():
    engine = SimpleNamespace(get_global_grad_norm=lambda: 2.5)
    assert deepspeed_grad_norm(strategy(DeepSpeedStrategy, _model=engine)).item() == 2.5
    before_first_step = SimpleNamespace(get_global_grad_norm=lambda: None)
    assert deepspeed_grad_norm(strategy(DeepSpeedStrategy, _model=before_first_step)) is None
    assert deepspeed_grad_norm(strategy(DDPStrategy, _model=engine)) is None


def test_max_grad_norm_is_refused_under_deepspeed_which_would_ignore_it():
    with pytest.raises(ValueError, match="max_grad_norm: 1.0 would not clip under DeepSpeed.*gradient_clipping"):
        check_clipping(strategy(DeepSpeedStrategy), 1.0)
    check_clipping(strategy(DeepSpeedStrategy), None)
    check_clipping(strategy(DDPStrategy), 1.0)


def test_which_strategies_shard_the_parameters():
    def zero(stage):
        return strategy(DeepSpeedStrategy, config={"zero_optimization": {"stage": stage}})
    assert shards_parameters(zero(3)) and shards_parameters(strategy(ModelParallelStrategy))
    assert not shards_parameters(zero(2)) and not shards_parameters(strategy(DDPStrategy))
