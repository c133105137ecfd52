"""Offline experiments: simulated data sets, evaluations and their reports.

Everything here may use the simulator and every runtime layer; nothing in the runtime
(`collectors`, `ingest`, `twin`, `api`) imports it. The CLI's `simulate`, `anomaly
evaluate`, `failure dataset|evaluate` and `optimize train|evaluate` commands run it.
"""
