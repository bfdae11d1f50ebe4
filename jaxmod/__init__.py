"""jaxmod: JAX-native LLM-guided reinforcement learning (ULTRA policy modulation) on a jitted PPO learner."""

from jaxmod import envs
from jaxmod.ppo import HyperParams, PPOConfig, TrainOutput, TrainState, default_config, make_train

__version__ = "0.1.0"

__all__ = ["HyperParams", "PPOConfig", "TrainOutput", "TrainState", "default_config", "envs", "make_train"]
