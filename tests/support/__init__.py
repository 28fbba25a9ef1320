"""Helpers shared by test modules that are not fixtures (see tests/conftest.py for those)."""
