"""What the user sees on the terminal: user errors, the pipeline's own lines, progress, log routing.

The stage packages (fractal_pretrain, detectors, evaluation) import only ``console.errors``, which is
plain Python, so they stay usable as libraries; run.py owns everything else in here.
"""
