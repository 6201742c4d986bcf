#!/usr/bin/env python
"""Train LAVIMO from WebDataset shards: one process (CPU or GPU) or several with torchrun (DDP).

    python train.py --shards SHARDS --preset tiny --epochs 3 --out runs/tiny --device cpu
    python train.py --shards SHARDS --out runs/tiny --resume           # continue exactly where it stopped
    torchrun --nproc_per_node=4 train.py --shards SHARDS --preset paper --out runs/paper

The command lives in :mod:`lavimo.training.cli` (``python train.py --help``); this file only runs it.
"""

import sys

from lavimo.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
