from lit_rl.modules.base import RLModule
from lit_rl.modules.policy_module import PolicyModule
from lit_rl.modules.grpo import GRPO
from lit_rl.modules.listwise import DPO, IPO, REBEL, ListwiseModule, MultiCompletion
from lit_rl.modules.reinforce import REINFORCE, ReMax
from lit_rl.modules.reward_model import RewardModelTraining
from lit_rl.modules.rloo import RLOO
from lit_rl.modules.sft import SFT
from lit_rl.modules.topr import TOPR

__all__ = ["DPO", "GRPO", "IPO", "RLOO", "REBEL", "REINFORCE", "SFT", "TOPR", "ListwiseModule", "MultiCompletion",
           "PolicyModule", "RLModule", "ReMax", "RewardModelTraining"]
