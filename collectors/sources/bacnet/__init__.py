"""The `bacnet` collector source plugin: see README.md beside this file."""
