"""Thin command-line front ends: `cachekit` and `evalcore`."""
