"""The local mesh: a scenario run for real on one machine, and compared with its simulation.

``simmesh up`` (up.py) plans the processes (plan.py), starts them in a network namespace of
their own when it can (launch.py, procs.py) and applies the timeline in real time (run.py),
with the scenario's traffic from Locust (locustfile.py). ``simmesh verify`` (verify.py)
simulates the same scenario, runs it, turns the measurements into the simulator's result
format (collect.py) and compares the two.

The proxies, the controller and the test apps are separate processes started by their
commands: this package imports none of them (an import-linter contract), only mesh.core and
the simulator's scenario, metrics and reports.
"""
