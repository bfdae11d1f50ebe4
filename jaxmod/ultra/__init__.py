"""The ULTRA pipeline: pretrain -> collect -> identify -> advise -> pack -> refine, with the host-side
asynchronous advisor loop that overlaps LLM queries with device training."""

from jaxmod.ultra.config import UltraConfig

__all__ = ["UltraConfig"]
