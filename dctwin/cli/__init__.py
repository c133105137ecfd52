"""The `dctwin` command line: `main.py` holds the app and the process commands; each
other module here is one command group (`dctwin anomaly`, `apikey`, `failure`, `optimize`)."""
