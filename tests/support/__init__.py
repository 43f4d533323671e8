"""What the tests share and are not tests: the rig, deepdockd as a process, the spec check, a
Prometheus server, the API helpers and the callers, each in a module named by what it is.
conftest.py holds the fixtures that use them."""
