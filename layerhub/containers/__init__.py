"""Containers: a writable layer over an image, changed, run, diffed and committed."""
