"""Garbage collection: free what nothing references, and what the retention rules let go.

Mark and sweep, as containerd's collector does. The marks come from the database: every
image's manifest, config and index, every layer an image uses (and the layers below it),
every container, and every key a live lease holds (a running pull, unpack, import, commit,
push or export will reference it). The sweep covers what the store holds beside them:

- ``blobs/`` files and Blob rows no image or layer names (a failed pull's, or kept by a lease
  when ``rmi`` ran), layer rows no image uses, and ``snapshots/`` no layer row names;
- ``containers/`` layers no container row names, and ``tmp/`` entries no live process holds,
  once older than LAYERHUB_GC_GRACE;
- untagged images added more than LAYERHUB_GC_KEEP_UNTAGGED ago, deleted as ``rmi`` deletes
  (``images_delete_plan``, ``images_delete_rows``, ``plan_files_delete``);
- ended jobs (and their leases) older than LAYERHUB_GC_KEEP_JOBS, archives saved for download
  older than LAYERHUB_GC_KEEP_EXPORTS, and uploads no import job holds older than the grace;
- with blobs in an object store, the multipart uploads of blobs never completed (an S3 client
  killed halfway through copying one in) begun more than LAYERHUB_GC_KEEP_MULTIPART ago and
  whose blob no live lease holds: aborted, their parts freed.

A dry run computes the same plan and changes nothing; its byte figure is what the sizes pages
compute (recorded sizes, measured only where no row records one) and what a run then frees
when nothing changed meanwhile. A run judges the rows under the exclusive side of the lease
barrier (``lease_barrier``) and deletes them first; files go after the transaction commits,
each re-checked under its own lock against leases and rows (a job may have leased it since),
so a crash at any point leaves at most files no row names, never a row naming a missing file.
Walks and removals never follow a symlink nor cross a mount point (``layerhub.engine.fsutil``).
"""

from __future__ import annotations

from layerhub.images.gc.collect import store_gc
from layerhub.images.gc.report import Garbage, GCReport

__all__ = ["GCReport", "Garbage", "store_gc"]
