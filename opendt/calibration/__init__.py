"""The online calibrator's parts: search space, scoring, warm-started candidate runs, rounds, journal, and
the offline driver (``opendt calibrate``). The component itself is :mod:`opendt.calibrator`."""
