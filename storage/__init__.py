"""Where the bytes live: one filesystem abstraction (``filesystem.py``, fsspec) and the output folder's layout (``layout.py``).

    >>> from paircurate import storage
    >>> storage.write_bytes("s3://bucket/out/_plan.json", b"{}")
    >>> from paircurate.storage.layout import OutputLayout
"""

from paircurate.storage.filesystem import (  # noqa: F401  (the package's face)
    RETRIES,
    StorageError,
    atomic_writer,
    call,
    exists,
    url_to_fs,
    find,
    glob,
    has_magic,
    is_remote,
    isdir,
    join,
    local_copy,
    makedirs,
    names,
    open_input,
    open_read,
    read_bytes,
    read_range,
    read_ranges,
    remove,
    size,
    storage_error_line,
    write_bytes,
)
