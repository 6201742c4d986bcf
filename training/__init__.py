"""The training harness ``train.py`` drives: the command and its loop (:mod:`training.cli`), the loop's helpers
(:mod:`training.loop`), the run directory (:mod:`training.run_dir`) and the lr schedule
(:mod:`training.schedule`)."""
