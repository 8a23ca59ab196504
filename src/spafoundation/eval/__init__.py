"""Metrics and benchmark protocols."""
