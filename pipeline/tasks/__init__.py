"""The task graph, wiring only: FetchListing → DownloadFile → VerifyTree → BundleArchive, and Unpack.

Each task's ``output()`` is the single truth of "done"; the work is done by plain functions in
``amsrepomirror.online``, ``.bundle`` and ``.offline``. Parameters default from the settings
section named after the task (the shipped defaults.cfg under any luigi.cfg) and can be overridden
on the command line. Importing this package registers every task and puts the shipped defaults
under Luigi's files, so ``luigi --module amsrepomirror.tasks VerifyTree ...`` runs on them too.
"""

from amsrepomirror import config
from amsrepomirror.tasks.base import MirrorTask, ReportsFailure, http, new_run_id, platform_rules
from amsrepomirror.tasks.bundle import BundleArchive, BundleTarget, VerifiedMirror, WriteChunk
from amsrepomirror.tasks.mirror import DownloadFile, FetchListing, JoinRun, MirrorFileTarget, VerifyTree
from amsrepomirror.tasks.unpack import ReceiptTarget, Unpack, unpack

__all__ = ["BundleArchive", "BundleTarget", "DownloadFile", "FetchListing", "JoinRun", "MirrorFileTarget", "MirrorTask",
           "ReceiptTarget", "ReportsFailure", "Unpack", "VerifiedMirror", "VerifyTree", "WriteChunk", "http",
           "new_run_id", "platform_rules", "unpack"]

config.install_defaults()  # parameters are resolved when a task is made, after this
