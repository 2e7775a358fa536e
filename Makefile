# amsrepomirror — online: make mirror / make bundle; offline: make unpack. `make help` lists targets.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
VERSION ?= AMS2026.1
# Several versions in one mirror: VERSION="AMS2025.1 AMS2026.1" MIRROR=DIR (MIRROR must then be given).
MIRROR_GIVEN := $(filter-out undefined default,$(origin MIRROR))
MIRROR  ?= mirror/$(VERSION)
BUNDLE  ?= bundle/$(subst $(eval) ,+,$(strip $(VERSION)))
VERSION_ARGS = $(foreach v,$(VERSION),--version $(v))
NEED_MIRROR = @test -z "$(word 2,$(VERSION))" -o -n "$(MIRROR_GIVEN)" || \
	{ echo "error: with several versions (VERSION=\"$(VERSION)\") give the shared mirror folder: MIRROR=DIR"; exit 2; }
# Unset: the settings decide (amsrepomirror config shows them).
CHUNK_SIZE ?=
# A delta bundle: last, a bundle folder, its manifest.json, or a receipt (unset: a full bundle).
SINCE ?=
# Size of one USB stick for `make plan` (unset: no stick plan).
STICK_SIZE ?=
# AMSHOME comes from the environment on an AMS machine; `make unpack AMSHOME=...` overrides it.

.PHONY: help venv test test-all lint mutants demo mirror bundle plan verify unpack bench wheels clean scheduler scheduler-stop \
	man completion install-extras

help:
	@echo "make test                          the fast tests (2 to 3 minutes; sets up $(VENV))"
	@echo "make test-all                      every test (about 20 minutes; what CI runs)"
	@echo "make lint                          ruff: pyflakes, pycodestyle, import order, banned imports"
	@echo "make mutants [ARGS=--only ID]      break each guarded integrity check in a copy; its tests must fail (docs/development.md)"
	@echo "make demo                          mirror -> bundle -> verify -> unpack against the local SCM double"
	@echo "make mirror VERSION=AMS2026.1 MIRROR=DIR"
	@echo "make bundle VERSION=AMS2026.1 [MIRROR=DIR] [BUNDLE=DIR] [CHUNK_SIZE=SIZE] [SINCE=last|BUNDLE|RECEIPT]"
	@echo "make bundle VERSION=\"AMS2025.1 AMS2026.1\" MIRROR=DIR   several versions in one mirror and bundle"
	@echo "make plan   [MIRROR=DIR] [CHUNK_SIZE=...] [STICK_SIZE=64GB] [SINCE=...]"
	@echo "make verify BUNDLE=DIR                 (ARGS=--partial: one stick of several)"
	@echo "make unpack BUNDLE=DIR [AMSHOME=DIR]   (AMSHOME from the environment when set there)"
	@echo "make bench                         benchmarks against wget, aria2c, 7zz and sha256sum (docs/benchmarks.md)"
	@echo "make wheels                        the tool and its dependencies as wheels, for offline installs"
	@echo "make man completion                the man page (man/amsrepomirror.1) and bash and zsh completion (completion/)"
	@echo "make install-extras [PREFIX=/usr/local]   install them under PREFIX/share (PREFIX=~/.local: for you only)"
	@echo "make scheduler [SCHEDULER_ADDRESS=IP] [SCHEDULER_PORT=8082]   start luigid (several processes or hosts share a run)"
	@echo "make scheduler-stop                stop it"
	@echo ""
	@echo "variables (now):"
	@echo "  VERSION=$(VERSION)    AMS version(s), e.g. AMS2026.1 (several: VERSION=\"AMS2025.1 AMS2026.1\")"
	@echo "  MIRROR=$(MIRROR)    mirror folder; put real mirrors outside this checkout"
	@echo "  BUNDLE=$(BUNDLE)    bundle folder to write, verify or unpack"
	@echo "  AMSHOME=$(AMSHOME)    the AMS installation folder (unpack)"
	@echo "  CHUNK_SIZE=$(CHUNK_SIZE)    largest chunk, e.g. 3900MiB (empty: the [BundleArchive] chunk_size setting)"
	@echo "  STICK_SIZE=$(STICK_SIZE)    size of one USB stick, e.g. 64GB (plan: which chunks go on which stick)"
	@echo "  SINCE=$(SINCE)    a delta since last, a bundle folder or a receipt (empty: a full bundle)"
	@echo "  WHEELS=$(WHEELS)    folder of wheels (make wheels) to install from without network"
	@echo "  ARGS=$(ARGS)    any other option, e.g. ARGS=\"--listing-url URL\" or ARGS=--partial"
	@echo "  SCHEDULER_ADDRESS=$(SCHEDULER_ADDRESS)    where luigid listens (make scheduler; empty: every interface, trusted networks only)"
	@echo "  SCHEDULER_PORT=$(SCHEDULER_PORT)    luigid's port"
	@echo "  PYTHON=$(PYTHON)    the interpreter that makes $(VENV)"
	@echo "  VENV=$(VENV)    where the tool is installed for these targets"
	@echo "  LUIGID_DIR=$(LUIGID_DIR)    luigid's state, log and pid (make scheduler)"
	@echo "  PREFIX=$(PREFIX)    where make install-extras puts the man page and completion (DESTDIR= for packaging)"
	@echo "sizes: KiB/MiB/GiB are 1024-based, kB/MB/GB 1000-based; a bare K/M/G is refused as ambiguous"

# Offline machines: a bundle made with --with-tool installs the tool itself (sh BUNDLE/tool/install.sh);
# or `make wheels` online, carry wheels/ along, then `make unpack WHEELS=wheels ...`.
WHEELS  ?=
PIP_FROM := $(if $(WHEELS),--no-index --find-links $(WHEELS),)
# Without WHEELS the venv comes from the package index: on a machine with no network, say so at once.
INDEX_URL := $(or $(PIP_INDEX_URL),https://pypi.org/simple)
NEED_INDEX = @$(PYTHON) -c 'import socket, sys, urllib.parse as u; i = u.urlsplit(sys.argv[1]); \
	i.scheme == "file" or socket.create_connection((i.hostname, i.port or (443 if i.scheme == "https" else 80)), 3)' \
	'$(INDEX_URL)' 2>/dev/null || { echo "error: cannot reach $(INDEX_URL) to install amsrepomirror: offline, run the \
	bundle's tool/install.sh (bundle --with-tool) or give wheels: make $(MAKECMDGOALS) WHEELS=DIR" >&2; exit 2; }

$(BIN)/amsrepomirror: pyproject.toml
	$(if $(WHEELS),,$(NEED_INDEX))
	$(PYTHON) -m venv $(VENV)
	$(if $(WHEELS),,$(BIN)/python -m pip install --quiet --upgrade pip)
	$(BIN)/python -m pip install --quiet $(PIP_FROM) $(if $(WHEELS),amsrepomirror,-e '.[test]')
	@touch $@

venv: $(BIN)/amsrepomirror

# The fast tier (2 to 3 minutes on two cores): unit and property tests and a few end-to-end paths.
test: venv
	$(BIN)/python -m pytest -q -m "not slow" -n 2 tests

# Everything (about 20 minutes on two cores): what .ci/run runs.
test-all: venv
	$(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/python -m ruff check pipeline tests bench .ci

# Every entry of .ci/mutants.ini must be killed (ARGS=--list shows them, ARGS="--only ID,ID" runs some).
mutants: venv
	AMSREPOMIRROR_REQUIRE_TOOLS=1 $(BIN)/python .ci/mutants.py $(ARGS)

demo: venv
	$(BIN)/amsrepomirror demo $(ARGS)

mirror: venv
	$(NEED_MIRROR)
	$(BIN)/amsrepomirror mirror $(VERSION_ARGS) --mirror $(MIRROR) $(ARGS)

bundle: venv
	$(NEED_MIRROR)
	$(BIN)/amsrepomirror bundle $(VERSION_ARGS) --mirror $(MIRROR) --out $(BUNDLE) $(if $(CHUNK_SIZE),--chunk-size $(CHUNK_SIZE)) $(if $(SINCE),--since $(SINCE)) $(ARGS)

plan: venv
	$(NEED_MIRROR)
	$(BIN)/amsrepomirror plan $(VERSION_ARGS) --mirror $(MIRROR) $(if $(CHUNK_SIZE),--chunk-size $(CHUNK_SIZE)) $(if $(STICK_SIZE),--stick-size $(STICK_SIZE)) $(if $(SINCE),--since $(SINCE)) $(ARGS)

verify: venv
	$(BIN)/amsrepomirror verify $(BUNDLE) $(ARGS)

unpack: venv
	$(BIN)/amsrepomirror unpack $(BUNDLE) $(if $(AMSHOME),--amshome $(AMSHOME)) $(ARGS)

bench: venv
	$(BIN)/python -m bench.run $(ARGS)
	$(BIN)/python -m bench.transfer $(ARGS)
	$(BIN)/python -m bench.airgap $(ARGS)
	$(BIN)/python -m bench.parity $(ARGS)
	$(BIN)/python -m bench.stable $(ARGS)
	$(BIN)/python -m bench.updates $(ARGS)
	$(BIN)/python -m bench.scale $(ARGS)

# Luigi's central scheduler, so that several processes and hosts share a mirror run (--scheduler-url).
# luigid has no authentication: it listens on loopback unless SCHEDULER_ADDRESS says otherwise
# (SCHEDULER_ADDRESS= for every interface): do that only on a trusted network, else use an SSH tunnel.
# luigid reads the [scheduler] settings shipped in the package (amsrepomirror config --scheduler).
SCHEDULER_ADDRESS ?= 127.0.0.1
SCHEDULER_PORT    ?= 8082
LUIGID_DIR        ?= .luigid

scheduler: venv
	@mkdir -p $(LUIGID_DIR)
	@if [ -f $(LUIGID_DIR)/luigid.pid ] && kill -0 $$(cat $(LUIGID_DIR)/luigid.pid) 2>/dev/null; then \
		echo "luigid is already running (pid $$(cat $(LUIGID_DIR)/luigid.pid)); make scheduler-stop ends it"; exit 0; fi; \
	settings=$$($(BIN)/amsrepomirror config --scheduler) || exit 2; \
	LUIGI_CONFIG_PATH="$$settings" $(BIN)/luigid --background $(if $(SCHEDULER_ADDRESS),--address $(SCHEDULER_ADDRESS)) --port $(SCHEDULER_PORT) \
		--pidfile $(abspath $(LUIGID_DIR))/luigid.pid --logdir $(abspath $(LUIGID_DIR)) \
		--state-path $(abspath $(LUIGID_DIR))/state.pickle && \
	echo "luigid: http://$(or $(SCHEDULER_ADDRESS),<this host>):$(SCHEDULER_PORT)/ (state and log in $(LUIGID_DIR)/); run: \
	amsrepomirror mirror ... --scheduler-url http://$(or $(SCHEDULER_ADDRESS),<this host>):$(SCHEDULER_PORT)"

scheduler-stop:
	@if [ -f $(LUIGID_DIR)/luigid.pid ] && kill $$(cat $(LUIGID_DIR)/luigid.pid) 2>/dev/null; then \
		rm -f $(LUIGID_DIR)/luigid.pid; echo "luigid stopped"; else echo "luigid is not running"; fi

wheels: venv
	$(BIN)/python -m pip wheel --quiet --wheel-dir wheels .
	@echo "wheels/ holds amsrepomirror and its dependencies; carry it with the bundle"

# The man page and shell completion, generated from the parser (amsrepomirror.cli.parser.build_parser) by
# argparse-manpage and shtab (the [test] extra). Run in an empty folder without LUIGI_CONFIG_PATH, so the
# defaults shown are the shipped ones, not this checkout's luigi.cfg.
PREFIX ?= /usr/local
FROM_PARSER = cd $(@D) && env -u LUIGI_CONFIG_PATH $(abspath $(BIN))
PARSER = --prog amsrepomirror amsrepomirror.cli.parser.build_parser
MAN_FROM := man/amsrepomirror.include $(wildcard pipeline/cli/*.py)
NEED_GENERATORS = @test -x $(BIN)/argparse-manpage -a -x $(BIN)/shtab || { echo "error: $(VENV) lacks argparse-manpage \
	or shtab (a venv made from WHEELS=): $(BIN)/python -m pip install 'argparse-manpage>=4.5' 'shtab>=1.7'" >&2; exit 2; }

man: man/amsrepomirror.1

man/amsrepomirror.1: $(BIN)/amsrepomirror $(MAN_FROM)
	$(NEED_GENERATORS)
	$(FROM_PARSER)/argparse-manpage --module amsrepomirror.cli.parser --function build_parser --prog amsrepomirror \
		--version "$$($(abspath $(BIN))/amsrepomirror --version | cut -d' ' -f2)" --manual-title "amsrepomirror manual" \
		--description "mirror SCM's AMS package repository and carry it across an air gap" \
		--include $(abspath man/amsrepomirror.include) --output amsrepomirror.1

completion: completion/amsrepomirror completion/_amsrepomirror

completion/amsrepomirror: $(BIN)/amsrepomirror $(MAN_FROM)
	$(NEED_GENERATORS)
	@mkdir -p $(@D)
	$(FROM_PARSER)/shtab --shell=bash $(PARSER) > amsrepomirror.new && mv amsrepomirror.new amsrepomirror

completion/_amsrepomirror: $(BIN)/amsrepomirror $(MAN_FROM)
	$(NEED_GENERATORS)
	@mkdir -p $(@D)
	$(FROM_PARSER)/shtab --shell=zsh $(PARSER) > _amsrepomirror.new && mv _amsrepomirror.new _amsrepomirror

# Where man, bash-completion (loaded on first use) and zsh look under PREFIX; DESTDIR for package builds.
install-extras: man completion
	install -D -m 644 man/amsrepomirror.1 $(DESTDIR)$(PREFIX)/share/man/man1/amsrepomirror.1
	install -D -m 644 completion/amsrepomirror $(DESTDIR)$(PREFIX)/share/bash-completion/completions/amsrepomirror
	install -D -m 644 completion/_amsrepomirror $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_amsrepomirror

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache man/amsrepomirror.1 completion
