"""The `snmp` collector source plugin: see README.md beside this file."""
