"""meshproxy: an Envoy-style service proxy in Python.

Layers (imports point one way): ``meshproxy`` (CLI, main process, config, admin)
→ ``workers`` (event loop, listeners, connections, upstreams) → ``filters``
(one package per network filter) → codecs and ``stats_shm``.
"""

__version__ = "0.1.0"
