"""Configuration: Envoy v3 bootstrap YAML in, frozen ``model.Bootstrap`` out.

``load_config`` reads and merges the sources (``loader``), checks them against
hand-written schemas (``bootstrap``, ``listener``, ``cluster``, ``address``, built with
``filters.config_schema``) and compiles them into ``model`` objects. Every problem is
reported at once, as ``file: yaml.path: what is wrong``. See docs/config.md.
"""

from __future__ import annotations

from meshproxy.config.loader import ConfigError, load_config
from meshproxy.config.model import Bootstrap

__all__ = ["Bootstrap", "ConfigError", "load_config"]
