"""DecCM models: pure torch, no I/O (``docs/method.md`` §3–§6)."""
from deccm.models.config import MODE_SWITCHES, ModelConfig
from deccm.models.ridge import RidgeMatcher
from deccm.models.student import DecCMStudent
from deccm.models.teacher import CrossModalVAE

__all__ = ["MODE_SWITCHES", "CrossModalVAE", "DecCMStudent", "ModelConfig", "RidgeMatcher"]
