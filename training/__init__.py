"""The offline trainer: data sets, the training loop, resume state, DDP, and evaluation.

Imports ``model``; never ``app``. Entry points are ``ddpm train`` and ``ddpm eval`` (see
``training.cli``).
"""
