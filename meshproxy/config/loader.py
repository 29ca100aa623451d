"""Reading the config: files, ``conf.d`` directories and ``--config-yaml``, merged into one document.

Sources are read in order: each path is a file, or a directory whose ``*.yaml``/``*.yml``
files (not hidden ones) are read in name order; ``--config-yaml`` text comes last. They
are merged as Envoy merges ``--config-yaml`` over ``-c`` (a proto merge): mappings
recurse, lists append, scalars replace. So ``static_resources.listeners`` and
``.clusters`` from several files are concatenated, and a later ``node.id`` wins.

While merging, the loader records which source every top-level key and every appended
list element came from; ``ParseContext`` uses that to prefix each error with its file:
``conf.d/10-redis.yaml: static_resources.clusters[2].type: ...``.

Duplicate mapping keys are YAML errors here (PyYAML would silently keep the last), since
two ``filter_chains`` keys in one listener are a mistake, never an intent.

Nothing here binds a socket or resolves a name: ``--mode validate`` and a reload use the
same ``load_config`` as a start.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import yaml

from filters import registry
from filters.config_schema import ParseContext, describe, join
from meshproxy.config.bootstrap import compile_bootstrap
from meshproxy.config.model import Bootstrap

CONFIG_YAML_SOURCE = "--config-yaml"
YAML_SUFFIXES = (".yaml", ".yml")


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem as ``file: path: message``."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping (merge keys ``<<`` excepted)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str, errors: list[str]) -> object:
    """One YAML (or JSON) document; a syntax error is reported with its line and column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        errors.append(f"{source}: {where}invalid YAML: {exc.problem}")
    except yaml.YAMLError as exc:
        errors.append(f"{source}: invalid YAML: {exc}")
    return None


def config_files(paths: Sequence[str], errors: list[str]) -> list[str]:
    """The files to read, in order: files as given, directories expanded in name order."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(
                name for name in os.listdir(path)
                if name.endswith(YAML_SUFFIXES) and not name.startswith(".")
                and os.path.isfile(os.path.join(path, name))
            )
            files.extend(os.path.join(path, name) for name in names)
        elif os.path.isfile(path):
            files.append(path)
        else:
            errors.append(f"{path}: no such file or directory")
    return files


def _forget(sources: dict[str, str], path: str) -> None:
    for key in [k for k in sources if k == path or k.startswith((f"{path}.", f"{path}["))]:
        del sources[key]


def _merge(
    into: dict[Any, Any], document: dict[Any, Any], path: str, source: str, sources: dict[str, str]
) -> None:
    for key, value in document.items():
        kpath = join(path, key)
        old = into.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value, kpath, source, sources)
        elif isinstance(old, list) and isinstance(value, list):
            for item in value:
                sources[join(kpath, len(old))] = source
                old.append(copy.deepcopy(item))
        else:
            _forget(sources, kpath)
            into[key] = copy.deepcopy(value)
            sources[kpath] = source


def merge_documents(
    documents: Sequence[tuple[str, object]], errors: list[str]
) -> tuple[dict[Any, Any], dict[str, str]]:
    """Proto-merge ``(source, document)`` pairs in order; returns the document and path -> source."""
    merged: dict[Any, Any] = {}
    sources: dict[str, str] = {}
    for source, document in documents:
        if document is None:  # an empty file
            continue
        if not isinstance(document, dict):
            errors.append(f"{source}: expected a mapping at the top level, got {describe(document)}")
            continue
        _merge(merged, document, "", source, sources)
    return merged, sources


def load_config(
    paths: Sequence[str], config_yaml: str | None = None, *, filter_modules: tuple[str, ...] = ()
) -> Bootstrap:
    """Read, merge, validate and compile a configuration; raises ConfigError listing every problem.

    ``filter_modules`` are imported first so that their filters can be configured.
    """
    try:
        registry.load_builtin_filters(filter_modules)
    except ImportError as exc:
        raise ConfigError([f"--filter-module: cannot import {exc.name or ''}: {exc}"]) from exc
    if isinstance(paths, str):  # one path given as a string, not a sequence of paths
        paths = [paths]
    if not paths and config_yaml is None:
        raise ConfigError(["no configuration: give a config path (-c) or --config-yaml"])
    errors: list[str] = []
    documents: list[tuple[str, object]] = []
    files = config_files(paths, errors)
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"{path}: cannot read: {exc}")
            continue
        documents.append((path, parse_yaml(text, path, errors)))
    if config_yaml is not None:
        documents.append((CONFIG_YAML_SOURCE, parse_yaml(config_yaml, CONFIG_YAML_SOURCE, errors)))
    merged, sources = merge_documents(documents, errors)
    if errors:
        raise ConfigError(errors)
    ctx = ParseContext(sources, default_source=documents[0][0] if len(documents) == 1 else "")
    bootstrap = compile_bootstrap(merged, ctx)
    if bootstrap is None:
        raise ConfigError(ctx.errors)
    return replace(bootstrap, source_files=tuple(files), raw=merged)
