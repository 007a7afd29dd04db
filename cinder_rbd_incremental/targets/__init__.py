"""Where data lands: sinks for the engine and backup targets for the driver.

Backup targets are stevedore plugins in the ``cinder_rbd_incremental.targets``
namespace (``rbd``: a chain image per volume in a pool on a second cluster;
``file``: a directory of diff files).
"""
