"""``make scale-test``: minidoor on eleven hosts (network namespaces on one machine) under load and network faults.

``hosts.py`` makes the hosts and their links, ``cluster.py`` starts every process on its host, ``balancer.py`` is
the user stores' TCP balancer, ``load.py`` the load generator on the load host, ``runs.py`` the runs and their
figures, ``__main__.py`` the whole test. README: "make scale-test".
"""
