"""Releases a user publishes: converted, audited and described by a dataset card (``release``, ``card``)."""
