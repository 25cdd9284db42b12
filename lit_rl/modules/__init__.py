from lit_rl.modules.base import PolicyModule, RLModule
from lit_rl.modules.grpo import GRPO
from lit_rl.modules.reinforce import REINFORCE, ReMax
from lit_rl.modules.rloo import RLOO
from lit_rl.modules.sft import SFT

__all__ = ["GRPO", "RLOO", "REINFORCE", "PolicyModule", "RLModule", "ReMax", "SFT"]
