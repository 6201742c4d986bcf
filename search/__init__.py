"""Search a motion database with a trained LAVIMO model: ``search.model.load`` (Python API), ``search.index``
(motion index), ``search.video`` (real video files), ``search.preview`` (skeleton previews through the headless renderer),
``search.cli`` (``lavimo-search``), ``search.server`` (the search page)."""
