"""For tests and the demo: the SCM double, a real HTTP server standing in for SCM's repository."""
