"""deepdockd: a host daemon for shared GPU servers."""

__version__ = "0.1.0"
