"""LAVIMO: tri-modal (text, video, 3D motion) retrieval in one embedding space (Yin et al., arXiv 2403.00691).

Installed as the one package ``lavimo``; the repository root is that package, so its folders are its subpackages:
``lavimo.core`` (foundation), ``lavimo.body``, ``lavimo.render``, ``lavimo.dataset``, ``lavimo.model``,
``lavimo.training``, ``lavimo.evaluation``, ``lavimo.search``, and ``lavimo.train`` / ``lavimo.evaluate`` (the
checkout's ``train.py`` / ``evaluate.py``, runnable as ``python -m lavimo.train`` or ``torchrun -m lavimo.train``).
The structure and its contracts: docs/design.md.
"""

from pathlib import Path

__version__ = "0.1.0"

#: the Slurm batch scripts (train, render array, shard array), installed with the package (a checkout's
#: ``scripts/slurm/``): ``sbatch "$(python -c 'import lavimo; print(lavimo.SLURM_SCRIPTS)')/train.sbatch"``
SLURM_SCRIPTS = Path(__file__).resolve().parent / "scripts" / "slurm"
