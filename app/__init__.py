"""The captioning app: `python -m app.caption` and the helpers the menubar app shares."""
