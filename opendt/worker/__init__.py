"""Engine worker processes: the frame protocol, the child, the parent-side client (the twin's own worker),
warm starts, the pool of candidate workers, and the one process helper every child process goes through."""
