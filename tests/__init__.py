"""deepdockd's tests. A package, so that their helpers are ``tests.support`` for the bench too."""
