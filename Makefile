# The two commands: `make run` (demo site) and `make test` (whole suite).
# Each creates what it needs on first use and is quick once set up.
# `make test-fast`: unit tests, the docs build and the doc examples only (no
# router, no agents); under a minute. `.ci/run` runs `make test`.
# `make test` runs two test files at a time (pytest-xdist, each file whole in
# one worker, so a module's site is shared by its tests as before): most of
# the suite waits on real routers and agents. `make test TEST_JOBS=` runs it
# in one process.
PYTHON ?= python3
VENV := .venv
CBVENV := .venv-crossbar
PIP_QUIET := --quiet --disable-pip-version-check
export PIP_NO_INPUT := 1
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip's notes about unreachable local mirrors are noise; real errors still fail.
QUIET_PIP := sed -u '/^WARNING: Location/d'

.PHONY: run test test-fast venv crossbar influxdb web browser bench docs clean
TEST_JOBS ?= -n 2 --dist loadfile

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) --upgrade pip 2>&1 | $(QUIET_PIP)
	$(VENV)/bin/pip install $(PIP_QUIET) -e '.[test,docs]' 2>&1 | $(QUIET_PIP)
	$(VENV)/bin/python -c "import ocs_locking, ocs, pytest, sphinx" 
	touch $@

$(CBVENV)/.installed: site-config/crossbar/requirements.txt
	test -x $(CBVENV)/bin/python || $(PYTHON) -m venv $(CBVENV)
	$(CBVENV)/bin/pip install $(PIP_QUIET) --upgrade pip 2>&1 | $(QUIET_PIP)
	$(CBVENV)/bin/pip install $(PIP_QUIET) -r site-config/crossbar/requirements.txt 2>&1 | $(QUIET_PIP)
	$(CBVENV)/bin/crossbar version > /dev/null
	touch $@

venv: $(VENV)/.installed
crossbar: $(CBVENV)/.installed

# InfluxDB 1.x from Debian for the recorded-statistics test (the test starts
# its own server on a loopback port; the package's service is not used).
INFLUXD ?= /usr/bin/influxd
influxdb:
	@test -x $(INFLUXD) || { \
	  echo "installing Debian's influxdb (for tests/integration/test_influx.py)"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) \
	    apt-get install -y -qq --no-install-recommends influxdb > /dev/null; }
	@test -x $(INFLUXD)

# The live page's one JavaScript dependency, autobahn-browser (MIT), from npm
# at the version package-lock.json pins (no CDN): `npm ci` into node_modules/,
# then copied into the package (ocs_locking/web/, gitignored), where crossbar's
# static service finds it beside index.html. npm itself comes from apt if missing.
WEB := ocs_locking/web
$(WEB)/autobahn.min.js: package.json package-lock.json
	command -v npm > /dev/null || (DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm))
	npm ci --no-audit --no-fund --loglevel=error
	cp node_modules/autobahn-browser/autobahn.min.js $@
	cp node_modules/autobahn-browser/LICENSE $(WEB)/autobahn.LICENSE
web: $(WEB)/autobahn.min.js

# The headless browser of the page's tests: Debian's chromium (driven by
# Playwright from PyPI, pointed at /usr/bin/chromium; never `playwright install`).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium)
	$(CHROMIUM) --version
browser: $(CHROMIUM)

# make run PORT=18011 moves the router (default: the port in SITE's hub.wamp_server);
# SITE=docs/examples/own_agent_site.yaml runs another site config.
SITE ?= site-config/default.yaml
PORT ?=
run: venv crossbar web
	OCS_LOCKING_CROSSBAR=$(CURDIR)/$(CBVENV)/bin/crossbar $(VENV)/bin/python -m tools.devsite run $(SITE) --host demo --workdir run $(if $(PORT),--port $(PORT)) --watch

test: venv crossbar influxdb web browser
	OCS_LOCKING_INFLUXD=$(INFLUXD) OCS_LOCKING_CROSSBAR=$(CURDIR)/$(CBVENV)/bin/crossbar PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/python -m pytest -q -p no:cacheprovider --doctest-glob='*.rst' $(TEST_JOBS) tests docs

test-fast: venv
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m 'not integration' --doctest-glob='*.rst' tests/unit tests/test_docs.py docs

bench: venv
	$(VENV)/bin/python benchmarks/lock_bench.py

docs: venv
	$(VENV)/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) $(CBVENV) run docs/_build *.egg-info
