"""Real Cinder objects on a sqlite *file* for the faults clusters.

The functional tier's environment (``tests/functional/cinder_env.py``: the
manager's way of calling the driver, os-brick's ``RBDVolumeIOWrapper`` as
the volume file, the driver's updates applied to the backup) on the
reliability tier's own pair, with a database file that a crash worker
process opens too, so a chain started in one process is continued in
another.
"""

import contextlib
import os

import rbd

from tests.functional import cinder_env
from tests.reliability import sandbox


class Env(cinder_env.CinderEnv):
    """One per process, on the faults pair."""

    # What the tier runs with: the default verification, shorter timeouts; one
    # source snapshot kept, so every incremental prunes one (a kill point).
    DEFAULT_OPTIONS = {"verify": "sample", "connect_timeout": 10, "op_timeout": 30,
                       "max_source_snapshots": 1}

    @classmethod
    def get(cls, db_path, create=True):
        return super().get(sandbox_dir=sandbox.FAULTS_DIR, db_path=db_path, create_db=create)


def delete_volume_image(volume):
    with contextlib.suppress(rbd.ImageNotFound):
        sandbox.remove_image(sandbox.PRIMARY, volume.name)


def db_file(directory):
    return os.path.join(directory, "cinder.sqlite")
