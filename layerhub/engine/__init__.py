"""The layerhub engine: digests, the content store, layer apply and diff, snapshots, the union view.

Pure Python: nothing here imports Django, Celery or any other part of layerhub (a test checks),
so the engine can be used and tested on its own.
"""
