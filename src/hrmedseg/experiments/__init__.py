"""Experiments that train models: equal-budget comparisons and zero-shot baselines.

They sit above :mod:`hrmedseg.training` (they run it) and :mod:`hrmedseg.evaluation` (they score it).
"""
