"""lit-rl: reinforcement-learning fine-tuning of language models as PyTorch Lightning modules."""

from lit_rl.callbacks import GroupAdvantage, KLEntropyTracker, RolloutRefresh
from lit_rl.data import CountdownData
from lit_rl.modules import GRPO, REINFORCE, RLOO, SFT, PolicyModule, ReMax, RLModule
from lit_rl.policy import LoraSettings, Policy
from lit_rl.rewards import RewardFunction, Score
from lit_rl.rollout import Generation, HFEngine, RolloutBatch, RolloutEngine, Sampling
from lit_rl.tasks.countdown import CountdownReward
from lit_rl.vllm_engine import VLLMEngine

__all__ = [
    "GRPO", "RLOO", "REINFORCE", "SFT", "CountdownData", "CountdownReward", "Generation", "GroupAdvantage",
    "HFEngine", "KLEntropyTracker", "LoraSettings", "Policy", "PolicyModule", "RLModule", "ReMax", "RewardFunction",
    "RolloutBatch", "RolloutEngine", "RolloutRefresh", "Sampling", "Score", "VLLMEngine",
]
