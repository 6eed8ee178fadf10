"""``make bench`` (``python -m services.bench``): throughput of minidoor's hot paths, each beside a baseline.

Every benchmark is an async function registered in ``BENCHMARKS`` (``services/bench/__main__.py``) taking the shared
``BenchContext`` (a running stack, started once on first use, and the measuring window) and returning ``Result``s. A
result is a rate with the rate of its baseline measured the same way, so the ratio travels between machines better
than either number. To add one (say, refreshes per second), write the function in a module of this package and
register it there.
"""
