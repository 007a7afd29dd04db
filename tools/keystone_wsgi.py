"""Keystone's WSGI application for gunicorn (``tools/cinder-stack``).

keystone 30 ships no ``keystone-wsgi-public`` script; its application is
``keystone.wsgi.api:application``. Importing it parses the command line with
oslo.config, which under gunicorn is gunicorn's own (``--bind``...): Keystone
would refuse it. So this module hides that argv and names the configuration
directory (``OS_KEYSTONE_CONFIG_DIR``, set by cinder-stack) before the import.
"""

import os
import sys

if not os.environ.get("OS_KEYSTONE_CONFIG_DIR"):
    raise RuntimeError("OS_KEYSTONE_CONFIG_DIR is not set (start Keystone with tools/cinder-stack)")
sys.argv = sys.argv[:1]

from keystone.wsgi.api import application  # noqa: E402,F401  (what gunicorn serves)
