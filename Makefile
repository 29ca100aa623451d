# Conveniences over scripts/; the README's two set-up commands are scripts/run and scripts/test.
.PHONY: run test lint typecheck bench

run:
	./scripts/run

test:
	./scripts/test

lint:
	ruff check .

typecheck:
	mypy --explicit-package-bases filters stats_shm meshproxy/config

bench:
	python bench/tcp_bench.py
