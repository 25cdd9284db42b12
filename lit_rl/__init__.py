"""lit-rl: reinforcement-learning fine-tuning of language models as PyTorch Lightning modules."""

from lit_rl.callbacks import CompletionLog, GroupAdvantage, KLEntropyTracker, RolloutCallback, RolloutRefresh
from lit_rl.chat import render_prompt
from lit_rl.data import PromptData
from lit_rl.environment import Environment, EnvStep
from lit_rl.collect import Collector, SingleTurn
from lit_rl.modules import (
    DPO, GRPO, IPO, REBEL, REINFORCE, RLOO, SFT, TOPR, ListwiseModule, MultiCompletion, PolicyModule, ReMax, RewardModelTraining,
    RLModule,
)
from lit_rl.multiturn import MultiTurn
from lit_rl.objectives import ImportanceSampling
from lit_rl.offline import OfflineData
from lit_rl.policy import LoraSettings, Policy
from lit_rl.rewards import FormatReward, FunctionReward, MathReward, RemoteReward, RewardFunction, Rewards, Score
from lit_rl.rewards.model import RewardModel
from lit_rl.rollout import CopyEngine, Generation, HFEngine, RolloutBatch, RolloutEngine, Sampling
from lit_rl.tasks.countdown import CountdownData, CountdownFeedback, CountdownReward
from lit_rl.tools import Tools
from lit_rl.vllm_engine import VLLMEngine
from lit_rl.vllm_server import VLLMServerEngine

from lit_rl.callbacks.erpd_stage import ERPDStageSwitch  # noqa: I001 (ERPD and PPO)
from lit_rl.modules.erpd import ERPD
from lit_rl.modules.erpd_teacher import Teacher
from lit_rl.critic import Critic, CriticSettings
from lit_rl.distributed import FSDP2
from lit_rl.modules.ppo import PPO

__all__ = [
    "DPO", "IPO", "REBEL", "TOPR", "ListwiseModule", "MultiCompletion", "OfflineData",
    "GRPO", "RLOO", "REINFORCE", "SFT", "CountdownData", "CountdownFeedback", "CountdownReward", "Generation",
    "GroupAdvantage",
    "HFEngine", "KLEntropyTracker", "LoraSettings", "Policy", "PolicyModule", "RLModule", "ReMax", "RewardFunction",
    "RolloutBatch", "RolloutCallback", "RolloutEngine", "RolloutRefresh", "Sampling", "Score", "VLLMEngine",
    "CompletionLog", "FormatReward", "FunctionReward", "MathReward", "PromptData", "RemoteReward", "RewardModel", "RewardModelTraining", "Rewards", "render_prompt",
    "Collector", "Environment", "EnvStep", "MultiTurn", "SingleTurn", "Tools", "VLLMServerEngine",
]
__all__ += ["CopyEngine", "FSDP2", "ImportanceSampling"]
__all__ += ["Critic", "CriticSettings", "ERPD", "ERPDStageSwitch", "PPO", "Teacher"]
