"""Search a motion database with a trained LAVIMO model: ``lavimo.search.model.load`` (Python API), ``lavimo.search.index``
(motion index), ``lavimo.search.video`` (real video files), ``lavimo.search.preview`` (skeleton previews through the headless renderer),
``lavimo.search.cli`` (``lavimo-search``), ``lavimo.search.server`` (the search page)."""
