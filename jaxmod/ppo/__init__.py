"""PPO: networks, losses, rollout and the pure training function."""

from jaxmod.ppo.config import PRESETS, ConfigError, HyperParams, PPOConfig, default_config
from jaxmod.ppo.networks import ActorCritic, make_policy
from jaxmod.ppo.train import PPOLearner, TrainOutput, TrainState, make_train

__all__ = [
    "PRESETS", "ActorCritic", "ConfigError", "HyperParams", "PPOConfig", "PPOLearner", "TrainOutput",
    "TrainState", "default_config", "make_policy", "make_train",
]
