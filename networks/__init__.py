"""Bundled networks and data (package data ``absint.networks``); find them with :func:`absint.data.bundled`."""
