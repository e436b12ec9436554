"""§6 (adversarial) and the §2.1 black-box baselines: importing the modules registers them.

- ``adversarial`` (fgsm | pgd | deepfool | one_pixel): workers/explain/attacks.py
- ``adversarial_generators`` (Charachon et al.): workers/explain/generators.py
- ``occlusion``: workers/explain/occlusion.py
- ``lime``: workers/explain/lime.py
- ``meaningful_perturbation``: workers/explain/meaningful.py
"""

from workers.explain import attacks, generators, lime, meaningful, occlusion  # noqa: F401
