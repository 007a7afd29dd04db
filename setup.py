"""Packaging with pbr, from setup.cfg.

The release number is setup.cfg's ``version``. pbr alone takes it only as the
*next* release: a commit without a release tag reports ``1.0.0.devN``, and a
copy of the tree without ``.git`` (a tarball of the repository) does not build
at all. pbr honours ``PBR_VERSION`` before anything else, so it is pinned to
setup.cfg's version here unless the caller set it.
"""

import configparser
import os

import setuptools


def release():
    config = configparser.ConfigParser()
    config.read(os.path.join(os.path.dirname(os.path.abspath(__file__)), "setup.cfg"))
    return config["metadata"]["version"]


os.environ.setdefault("PBR_VERSION", release())
setuptools.setup(setup_requires=['pbr>=2.0.0'], pbr=True)
