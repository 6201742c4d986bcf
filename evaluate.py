#!/usr/bin/env python
"""Evaluate LAVIMO retrieval with TMR's protocols, or score any method from a saved similarity matrix.

    python evaluate.py --run runs/NAME --shards SHARDS --split test --protocol everything \\
        --gallery --tsne
    python evaluate.py --run runs/NAME --shards SHARDS --protocol dissimilar         # the nsim_test split
    python evaluate.py --from-sims sims.npz [--threshold 0.8] [--out metrics.json]

The command lives in :mod:`lavimo.evaluation.cli` (``python evaluate.py --help``); this file only runs it.
"""

import sys

from lavimo.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
