"""Network filters, one package each, found by the ``@type`` of their config (see registry.py)."""
