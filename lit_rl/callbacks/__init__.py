from lit_rl.callbacks.completion_log import CompletionLog
from lit_rl.callbacks.erpd_stage import ERPDStageSwitch
from lit_rl.callbacks.group_advantage import GroupAdvantage
from lit_rl.callbacks.kl_entropy import KLEntropyTracker
from lit_rl.callbacks.rollout_callback import RolloutCallback
from lit_rl.callbacks.rollout_refresh import RolloutRefresh

__all__ = ["CompletionLog", "ERPDStageSwitch", "GroupAdvantage", "KLEntropyTracker", "RolloutCallback", "RolloutRefresh"]
