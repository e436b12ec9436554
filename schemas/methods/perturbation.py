"""§6 (adversarial) and the §2.1 black-box baselines."""
from __future__ import annotations
