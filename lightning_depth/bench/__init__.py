"""bench: what the pipeline costs over a plain PyTorch loop, our models against torchvision's, the loaders' share of a
step, the fast paths, DenseNet's memory-efficient mode, and what a sweep costs beyond its training (forked trials
against a fresh Python per trial), on this machine's CPU.

``python -m lightning_depth bench`` runs it (``command.py``); method, options and results: docs/performance.md.
Every comparison is a series of paired, interleaved rounds (``timing.py``); one module per section.
"""
