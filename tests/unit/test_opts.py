"""The sample configuration in etc/ is what the generator writes today."""

import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class SampleConfigTestCase(unittest.TestCase):
    def test_sample_is_current(self):
        generator = os.path.join(os.path.dirname(sys.executable), "oslo-config-generator")
        with tempfile.NamedTemporaryFile(suffix=".conf") as out:
            subprocess.run([generator, "--config-file",
                            os.path.join(ROOT, "etc/oslo-config-generator/"
                                              "cinder_rbd_incremental.conf"),
                            "--output-file", out.name], check=True, cwd=ROOT)
            with open(os.path.join(ROOT, "etc/cinder_rbd_incremental.conf.sample")) as sample:
                self.assertEqual(sample.read(), out.read().decode(),
                                 "etc/ sample is stale: run oslo-config-generator "
                                 "--config-file etc/oslo-config-generator/"
                                 "cinder_rbd_incremental.conf")
