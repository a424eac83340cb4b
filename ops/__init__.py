"""Operating the pipeline: `python -m ops status` and `python -m ops verify`."""
