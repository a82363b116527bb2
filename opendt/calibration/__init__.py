"""The online calibrator: the component (:mod:`~opendt.calibration.component`), its search space, scoring,
rounds and journal. Candidates run in :mod:`opendt.worker`; ``opendt calibrate`` is
:mod:`opendt.commands.calibrate`."""
