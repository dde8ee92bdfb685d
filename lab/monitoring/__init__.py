"""Monitoring a served model's inputs: ``skew`` (logged serving features against their
offline recomputation, and training sets from logs). The steps and commands that drive
it are in ``lab.steps.monitoring``; docs/monitoring.md describes both."""
