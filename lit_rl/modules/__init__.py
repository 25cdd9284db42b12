from lit_rl.modules.base import PolicyModule, RLModule
from lit_rl.modules.erpd import ERPD
from lit_rl.modules.erpd_teacher import Teacher
from lit_rl.modules.grpo import GRPO
from lit_rl.modules.ppo import PPO
from lit_rl.modules.reinforce import REINFORCE, ReMax
from lit_rl.modules.rloo import RLOO
from lit_rl.modules.sft import SFT

__all__ = ["ERPD", "GRPO", "PPO", "Teacher", "RLOO", "REINFORCE", "PolicyModule", "RLModule", "ReMax", "SFT"]
