"""The twin itself: the window loop, the topology box, hooks, durable results, the kept history,
warm-started scenario runs, and the status the API shows."""
