"""Experiments built on the training and evaluation layers: reproductions of the papers' table rows."""
