"""The per-call rules the engine (:mod:`workers.explain.engine`) hands intercepted calls to:
rectifiers (DeconvNet, guided backpropagation) in :mod:`~workers.explain.rules.relu`, LRP's
relevance rules in :mod:`~workers.explain.rules.lrp`, DeepLIFT's multiplier rules in
:mod:`~workers.explain.rules.deeplift`, and the argument binding of the linear calls they share
in :mod:`~workers.explain.rules.linear` (see docs/architecture.md)."""
