"""dctwin: the commands (`dctwin serve`, `collect`, ...), settings and process plumbing."""

from __future__ import annotations

import os

# issue 24 (memory): polars' allocator (jemalloc, `_RJEM_` prefixed) keeps freed pages for
# a while before returning them (polars' defaults: 500 ms dirty, 1 s muzzy, put in front
# of this setting when polars loads); a server that builds and drops large frames (the
# anomaly fit) then holds several of them at once. Returned at once instead (measured in
# a loop of 3 M-row group-bys: 426 -> 169 MB RSS, no slower; the API server's peak over
# the bench store 731 -> 674 MB). Read when polars loads: the `dctwin` command imports
# this package first; an environment that sets it wins.
POLARS_MALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"
os.environ.setdefault("_RJEM_MALLOC_CONF", POLARS_MALLOC_CONF)
