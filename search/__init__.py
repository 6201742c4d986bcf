"""Search a motion database with a trained LAVIMO model: ``search.model.load`` (Python API), ``search.index``
(motion index), ``search.video`` (real video files), ``search.preview`` (stick-figure previews),
``search.cli`` (``lavimo-search``), ``search.server`` (the search page)."""
