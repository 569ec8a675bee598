"""Admitters: decide, before any endpoint is picked, whether a request is served at all."""
