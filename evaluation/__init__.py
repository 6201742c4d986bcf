"""Retrieval evaluation: TMR's metrics (:mod:`evaluation.metrics`) and protocols (:mod:`evaluation.protocols`),
the one split encoder (:mod:`evaluation.encode`, also used by training's validation), the reports
(:mod:`evaluation.report`) and ``evaluate.py``'s command (:mod:`evaluation.cli`)."""
