"""Shard sets: the format (:mod:`.format`), where a set lives (:mod:`.source`), writing and checking
(:mod:`.build`, :mod:`.check`), the streaming loader (:mod:`.stream`) and ``build-shards`` (:mod:`.cli`)."""
