"""The metadata is in setup.cfg. This file only marks the distribution as one for a platform:
it carries the bundled SSH server (static x86-64 or arm64 binaries, built by `make
ssh-server`), so its wheel must say which machine it is for, never "any"."""

from setuptools import setup
from setuptools.dist import Distribution


class PlatformDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        return True


setup(distclass=PlatformDistribution)
