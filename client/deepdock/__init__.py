"""``deepdock``: the terminal client of deepdockd. It speaks only HTTP to one or more daemons
and imports nothing of the daemon; its heavy imports (httpx, rich) wait until a command
needs them, so that ``deepdock --version`` and ``--help`` start at once."""

# Its own version, released with the daemon's: tests/test_client_wheel.py holds the two equal,
# and the daemon's setup.cfg pins ``deepdock==`` this version.
__version__ = "0.1.0"
