"""The training harness ``train.py`` drives: the command and its loop (:mod:`lavimo.training.cli`), the loop's helpers
(:mod:`lavimo.training.loop`), the run directory (:mod:`lavimo.training.run_dir`) and the lr schedule
(:mod:`lavimo.training.schedule`)."""
