"""``python -m deepdockd.client``: the same as ``deepdock``."""

from deepdockd.client.main import main

main()
