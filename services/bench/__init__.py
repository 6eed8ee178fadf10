"""``make bench`` (``python -m services.bench``): minidoor beside its peer (oidc-provider) under one load tool (wrk),
every CPU figure in units of a trivial aiohttp request measured in the same run.

A run measures the unit (``unit.py``), then the groups in order: the peer (``peer.py``), then against one stack
(``stack.py``) introspection and local verification (``tokens.py``) and logins (``logins.py``). Each wrk window goes
through ``harness.measure``, which reads the CPU and memory of the measured processes (``cpu.py``) around it and
turns it into a ``results.Scenario``; a scenario that missed a target is then profiled in a second window of the
same load (``BenchContext.explain``, ``profiles.py``). ``targets.py`` evaluates the issue's targets, ``report.py``
writes the table and the Markdown, ``plot.py`` the PNG, and ``check.py`` is what ``make bench-smoke`` holds the files
to. To add a scenario, add its key to ``results.expected_keys`` and a function that returns it to its group.
"""
