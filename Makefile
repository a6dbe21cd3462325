# Ensign: `make run` starts a dev daemon, `make test` runs every check. Both bootstrap themselves.
VENV    := .venv
BIN     := $(VENV)/bin
# the strict editable install links files, so a new or removed module means re-running it
FILES   := $(shell find daemon attestors proto sdk -name '*.py' -o -name '*.pyi' 2>/dev/null | sort | md5sum | cut -c1-10)

.PHONY: run test lint typecheck proto proto-check unit bench bench-quick clean soak deb bytecode

STAMP   := $(VENV)/.installed-$(FILES)

$(STAMP): pyproject.toml scripts/bootstrap.sh
	@rm -f $(VENV)/.installed-*
	@scripts/bootstrap.sh
	@touch $@

# Byte code for the editable install, as the .deb's postinst compiles it: with
# PYTHONDONTWRITEBYTECODE set (CI and many containers) every daemon start and CLI call would
# otherwise compile Ensign's modules again (about 0.2 s each). Only changed files are redone.
bytecode: $(STAMP)
	@$(BIN)/python -c 'import compileall, pathlib, ensign.daemon as d; \
	  compileall.compile_dir(str(pathlib.Path(d.__file__).parent.parent), quiet=1)'

run: $(STAMP) bytecode
	$(BIN)/ensign daemon --dev

# one file per worker at a time (--dist loadfile), so a module's shared daemon starts once
JOBS    ?= 4
test: lint proto-check bytecode
	$(BIN)/pytest -q -n $(JOBS) --dist loadfile tests

lint: $(STAMP)
	$(BIN)/ruff check daemon attestors sdk examples tests bench scripts
	$(BIN)/mypy --strict -p ensign.daemon -p ensign.attestors -p ensign.sdk
	$(BIN)/mypy --strict examples
	$(BIN)/lint-imports --no-cache

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

proto-check: $(STAMP)
	$(BIN)/python scripts/gen_proto.py --check

# the long forms of tests/hardening: 32 clients x 60 s, 100 kill -9, 10x the fuzz examples
soak: $(STAMP)
	ENSIGN_SOAK=1 $(BIN)/pytest -q tests/hardening

# the baselines the benchmarks compare against (Keylime's checkquote for the TPM figure)
BENCH_STAMP := $(VENV)/.bench-installed-$(FILES)

$(BENCH_STAMP): $(STAMP)
	@rm -f $(VENV)/.bench-installed-*
	$(BIN)/python -m pip install -q -e '.[test,bench]' --config-settings editable_mode=strict
	@touch $@

bench: $(BENCH_STAMP) bytecode
	$(BIN)/python -m bench

bench-quick: $(BENCH_STAMP) bytecode
	$(BIN)/python -m bench --quick

# build/deb/ensign_<version>_<arch>.deb: the app in a venv under /opt/ensign (needs root)
deb:
	packaging/build_deb.sh

clean:
	rm -rf $(VENV) build .ensign .pytest_cache .mypy_cache .ruff_cache
