"""The napari dock widgets (Qt side). Each is thin: it gathers settings, runs a core function in a
worker (model work in the separate process of :mod:`napari_emgranules._engine`) and shows the
result. Shared pieces are in :mod:`._common`."""
