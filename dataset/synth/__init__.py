"""The synthetic-motion generator (``synth-amass``): an AMASS-format corpus with HumanML3D-style annotations.

:mod:`lavimo.dataset.synth.corpus` (the command and :func:`~lavimo.dataset.synth.corpus.generate_corpus`),
:mod:`lavimo.dataset.synth.actions` (the actions and their captions), :mod:`lavimo.dataset.synth.rig` (posing a body from
joint targets), :mod:`lavimo.dataset.synth.skeleton` (forward kinematics on :mod:`lavimo.body.skeleton`'s generator table).
"""
