"""mongo_proxy: a passive MongoDB wire-protocol sniffer (``envoy.filters.network.mongo_proxy``).

The filter sits before tcp_proxy, decodes copies of the bytes in both directions for stats and
access logs, and never alters traffic. This package holds:

* ``codec`` -- the sans-IO decoder (``MongoDecoder``: ``feed`` bytes, ``next_message`` until
  ``NEED_DATA``) and the framing / raw-BSON rules it enforces;
* ``messages`` -- the decoded message types (frozen, slotted dataclasses), ``OpCode``,
  ``Compressor`` and ``MongoProtocolError``;
* ``rawbson`` -- BSON read in place: framing checks, a top-level walk, ``first_element`` and the
  ``DocSummary`` (command, collection, $db, comment, ok, errmsg, code, cursor id, doc count).

A codec never imports asyncio, sockets or stats; the filter and its stat block live next to it.
"""
