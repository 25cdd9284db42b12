"""The strategy fragments under cli_configs/strategies/ parse on top of an algorithm's config against
Lightning's signatures. DDP and FSDP2 also instantiate here; they run for real in test_distributed.py.
Lightning runs DeepSpeed on GPUs alone, so its fragments are parsed and their strategies built, not run (DeepSpeed
itself runs on CPU in test_zero3.py)."""


import pytest
from lightning.pytorch.strategies import DeepSpeedStrategy, ModelParallelStrategy

from lit_rl.cli import LitRLCLI
from lit_rl.distributed import FSDP2, check_clipping, shards_parameters

from conftest import ROOT

STRATEGIES = ROOT / "cli_configs" / "strategies"


class ParseOnly(LitRLCLI):
    def instantiate_classes(self) -> None:
        pass


def parse(*fragments: str):
    args = ["--config", str(ROOT / "cli_configs" / "grpo.yaml")]
    for f in fragments:
        args += ["--config", str(STRATEGIES / f)]
    return ParseOnly(run=False, args=args).config


def test_every_strategy_fragment_is_tested():
    assert {p.name for p in STRATEGIES.glob("*.yaml")} == {"ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml",
                                                           "deepspeed_zero3.yaml"}


def test_ddp_fragment():
    config = parse("ddp.yaml")
    assert config.trainer.strategy == "ddp" and config.model.class_path == "lit_rl.GRPO"


def test_fsdp_fragment_is_fsdp2_and_instantiates():
    """``lit_rl.FSDP2``: Lightning's ``ModelParallelStrategy`` without tensor parallelism, its data-parallel size
    set to the world size at setup (the 2-process and 2-node runs of tests/test_distributed.py use it)."""
    config = parse("fsdp.yaml")
    strategy = config.trainer.strategy
    assert strategy.class_path == "lit_rl.FSDP2"
    built = FSDP2(**(strategy.init_args or {}))
    assert isinstance(built, ModelParallelStrategy) and built._tensor_parallel_size == 1
    with pytest.raises(ValueError, match="lit_rl.FSDP2 sets data_parallel_size itself"):
        FSDP2(data_parallel_size=2)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_fragments(stage):
    config = parse(f"deepspeed_zero{stage}.yaml")
    strategy = config.trainer.strategy
    assert strategy.class_path == "lightning.pytorch.strategies.DeepSpeedStrategy"
    ds = strategy.init_args.config
    assert ds["zero_optimization"]["stage"] == stage and ds["gradient_clipping"] == 1.0
    assert config.trainer.accelerator == "gpu" and config.trainer.precision == "bf16-mixed"
    assert config.model.class_path == "lit_rl.GRPO"                    # the algorithm's settings survive
    assert config.model.init_args.max_grad_norm is None and config.model.init_args.eps_high == 0.28
    built = DeepSpeedStrategy(**strategy.init_args)                     # built, not run (Lightning needs a GPU)
    assert shards_parameters(built) == (stage == 3)
    check_clipping(built, config.model.init_args.max_grad_norm)        # the module's clip is off, as it must be
