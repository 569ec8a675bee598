"""Test helpers shared across packages: hand-built candidates and requests, a fake clock."""
