"""The bridge between host-side advice and the device: validated answers in, fixed-shape arrays out; ULTRA's
modulators (restarts, matching, action override, implicit reward, KL target, verification, consensus); the teacher
advisor (answers from a stronger saved policy)."""

from jaxmod.advice.arrays import Advice, AdviceBook, AdviceItem
from jaxmod.advice.modulation import ModulationConfig, ModulationError

__all__ = ["Advice", "AdviceBook", "AdviceItem", "ModulationConfig", "ModulationError"]
