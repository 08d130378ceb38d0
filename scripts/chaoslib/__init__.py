"""The chaos harness behind scripts/chaos.py: schedules, services, workloads, runner, checker.

- `schedule`: fault kinds and the seeded draw of one run's schedule (pure);
- `checker`: output and DLQ of a run against the fault-free run (pure);
- `services`: Tansu (durable storage on a moto of its own), moto + fault proxy;
- `workloads`: the three workloads (configs and inputs);
- `runner`: runs one schedule under `streamforge run` and injects its faults.
"""
