"""A simulated fleet for `benchmarks/fleet_storm.py`: devices that run the agent's own
lifecycle and transport against a real authority, a scheduler with an injectable clock,
and the outage scenario's arithmetic."""
