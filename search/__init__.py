"""Search a motion database with a trained LAVIMO model: ``model`` (``load``, the Python API), ``index`` (the
motion index), ``query`` (one query), ``video`` (real video files), ``preview`` (skeleton previews through the
headless renderer), ``cli`` (``lavimo-search``), ``server`` (the search page), ``demo`` (the demo's last stage)."""
