"""The CLI's commands (``opendt/cli.py`` parses and dispatches): ``run`` (the daemon with progress and a
summary), ``replay``, ``simulate``, ``calibrate``, ``demo``, ``runs``, ``serve``."""
