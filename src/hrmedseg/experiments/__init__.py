"""Experiments that train models: equal-budget comparisons, zero-shot baselines and the
reproductions of the papers' table rows.

They sit above :mod:`hrmedseg.training` (they run it) and :mod:`hrmedseg.evaluation` (they score it).
"""
