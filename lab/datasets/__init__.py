"""Data sets the platform ships: ``lab.datasets.fraud`` is the card-fraud simulator."""
