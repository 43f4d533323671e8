"""``python -m deepdock``: the same as ``deepdock``."""

from deepdock.main import main

main()
