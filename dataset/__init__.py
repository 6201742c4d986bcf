"""Data layer: AMASS reading, frame selection, annotations (Clip), motion features, shards and loader."""
