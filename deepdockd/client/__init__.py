"""``deepdock``: the terminal client of deepdockd. It speaks only HTTP to one or more daemons
and imports nothing of the daemon; its heavy imports (httpx, rich) wait until a command
needs them, so that ``deepdock --version`` and ``--help`` start at once."""
