"""The ``minisam`` command line."""
