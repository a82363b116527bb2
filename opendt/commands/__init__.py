"""The CLI commands that are not the daemon: ``opendt simulate``, ``opendt calibrate``, ``opendt demo``."""
