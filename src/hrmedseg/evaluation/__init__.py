"""Evaluation: a model on a dataset of images or 3-D cases, written as per-case tables and summaries.

The metric definitions themselves are :mod:`hrmedseg.metrics`.
"""
