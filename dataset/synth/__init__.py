"""The synthetic-motion generator (``synth-amass``): an AMASS-format corpus with HumanML3D-style annotations.

:mod:`dataset.synth.corpus` (the command and :func:`~dataset.synth.corpus.generate_corpus`),
:mod:`dataset.synth.actions` (the actions and their captions), :mod:`dataset.synth.rig` (posing a body from
joint targets), :mod:`dataset.synth.skeleton` (forward kinematics on :mod:`body.skeleton`'s generator table).
"""
