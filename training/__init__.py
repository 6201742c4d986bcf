"""The training harness ``train.py`` drives: its flags and reports (:mod:`lavimo.training.cli`), the run's config
(:mod:`lavimo.training.config`), the shards (:mod:`lavimo.training.data`), the loop
(:class:`lavimo.training.trainer.Trainer`) and its helpers (:mod:`lavimo.training.loop`), stop signals
(:mod:`lavimo.training.preemption`), the run directory (:mod:`lavimo.training.run_dir`) and the lr schedule
(:mod:`lavimo.training.schedule`)."""
