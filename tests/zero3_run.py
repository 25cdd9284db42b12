"""The tiny policy partitioned by real DeepSpeed ZeRO-3 (CPU, gloo, one process), for tests/test_zero3.py (a
script of its own: DeepSpeed sets up a process group and global state that must not leak into other tests).

    python tests/zero3_run.py MODEL_DIR {full,lora} OUT_DIR

Writes ``OUT_DIR/result.json``: whether the parameters were partitioned, whether ``merged_state_dict`` (and,
under LoRA, ``adapter_weights``) gave the full weights back, the exported ``hf_model`` (and its adapter) loaded
back as the same policy, and the gradient norm of one step as DeepSpeed's engine and as ``p.grad`` see it,
beside the norm of the same loss without DeepSpeed. Lightning runs DeepSpeed on GPUs alone, so its
``DeepSpeedStrategy`` is only built here (to hold the engine), not run.
"""

import json
import os
import sys

os.environ.update({"HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "RANK": "0",
                   "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
os.environ.setdefault("MASTER_PORT", "29517")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.strategies import DeepSpeedStrategy  # noqa: E402

from lit_rl.distributed import deepspeed_grad_norm  # noqa: E402
from lit_rl.export import adapter_weights, export_pretrained, merged_state_dict, zero3_partitioned  # noqa: E402
from lit_rl.policy import LoraSettings, Policy  # noqa: E402

PROMPTS = ["numbers [1, 2] target 3: ", "Using the numbers [4, 5], create an equation"]
COMPLETIONS = ["<answer>1 + 2</answer>", "<answer>(4 + 5)</answer>"]


def load(model_dir: str, lora: bool) -> Policy:
    torch.manual_seed(0)
    policy = Policy.load(model_dir, lora=LoraSettings(r=4, alpha=8) if lora else None)
    if lora:
        with torch.no_grad():
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.normal_()                                         # an adapter that changes the outputs
    return policy


def loss(policy: Policy, args: tuple) -> torch.Tensor:
    return -policy.logps(*args)[0].sum()


def main(model_dir: str, mode: str, out: str) -> None:
    lora = mode == "lora"
    plain = load(model_dir, lora)
    args = (*plain.encode_prompts(PROMPTS, 16), *plain.encode_completions(COMPLETIONS))
    expected = {k: v.clone() for k, v in merged_state_dict(plain.model).items()}
    logps = plain.logps(*args)[0].detach()
    loss(plain, args).backward()
    plain_norm = torch.nn.utils.get_total_norm([p.grad for p in plain.model.parameters() if p.grad is not None])

    deepspeed.init_distributed(dist_backend="gloo")
    policy = load(model_dir, lora)
    trainable = [p for p in policy.model.parameters() if p.requires_grad]
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "gradient_clipping": 0.0,
              "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=policy.model, model_parameters=trainable, config=config)
    result = {"partitioned": zero3_partitioned(policy.model)
              and all(p.numel() == 0 for p in policy.model.parameters())}
    state = merged_state_dict(policy.model)
    adapter = adapter_weights(policy.model) if lora else None
    result["state_equal"] = set(state) == set(expected) and all(torch.equal(state[k], v) for k, v in expected.items())
    result["partitioned_after"] = all(p.numel() == 0 for p in policy.model.parameters())
    export_pretrained(policy.model, policy.tokenizer, f"{out}/hf_model", state, adapter)
    reloaded = Policy.load(f"{out}/hf_model")
    result["export_logp_err"] = (reloaded.logps(*args)[0].detach() - logps).abs().max().item()
    if lora:
        from_adapter = Policy.load(f"{out}/hf_model/adapter")           # base + adapter through PEFT
        result["adapter_logp_err"] = (from_adapter.logps(*args)[0].detach() - logps).abs().max().item()

    engine.backward(loss(policy, args))
    result["p_grad_is_none"] = all(p.grad is None for p in trainable)
    engine.step()
    strategy = DeepSpeedStrategy(config=config)
    strategy._model = engine
    result["deepspeed_norm"] = float(deepspeed_grad_norm(strategy))
    result["plain_norm"] = float(plain_norm)
    with open(f"{out}/result.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
