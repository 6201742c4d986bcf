"""Retrieval evaluation: TMR's metrics (:mod:`lavimo.evaluation.metrics`) and protocols (:mod:`lavimo.evaluation.protocols`),
the one split encoder (:mod:`lavimo.evaluation.encode`, also used by training's validation), the reports
(:mod:`lavimo.evaluation.report`) and ``evaluate.py``'s command (:mod:`lavimo.evaluation.cli`)."""
