"""RICE's sparse variants of brax tasks (`brax/hopper-sparse`, ...): their id suffix and reward thresholds.

Plain constants (no jax), shared by the brax backend and the describers.
"""

SPARSE_SUFFIX = "-sparse"
# RICE's sparse MuJoCo tasks (after Mazoure et al. 2019): the reward is the torso's x-position, paid
# only once it exceeds this threshold (metres from the origin), and 0 before.
SPARSE_THRESHOLDS = {"hopper": 0.6, "walker2d": 0.6, "halfcheetah": 5.0}
