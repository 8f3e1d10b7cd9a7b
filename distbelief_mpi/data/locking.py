"""HDF5 file locks: recognising a refused lock, and what to tell the user (docs/datasets.md).

HDF5 (1.10 and later) flocks every file it opens: shared for reading, exclusive for
writing. A refused lock is EAGAIN (another process holds the file open for writing) or
ENOLCK (the file system, e.g. NFS without lockd, offers no locks at all).
"""

import errno

LOCK_ERRNOS = (errno.EAGAIN, errno.ENOLCK)
LOCKING_HINT = (
    "another process may hold it open for writing, or the file system (NFS, Lustre) may not "
    "support locks; for a dataset nobody writes, set HDF5_USE_FILE_LOCKING=FALSE (docs/datasets.md)"
)


def is_lock_failure(e: OSError) -> bool:
    """h5py raises e.g. BlockingIOError(11, 'Unable to synchronously open file (unable to
    lock file, errno = 11, ...)'); older builds give errno None and only the text."""
    return e.errno in LOCK_ERRNOS or "unable to lock file" in str(e).lower()
