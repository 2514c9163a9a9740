"""Load tests and benchmark harnesses (run by `make bench` and `make loadtest`, not by tests)."""
