# Shoal: `make demo` runs the main job on a local cluster, `make test` runs the test suite.
# Both create .venv and install what they need (Debian packages included) on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := etcd-server fuse3 libfuse3-dev pkg-config

.PHONY: all venv debs test demo lint clean bench

all: test

debs:
	@missing=""; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v fusermount3 >/dev/null 2>&1 || missing="$$missing fuse3"; \
	dpkg -s libfuse3-dev >/dev/null 2>&1 || missing="$$missing libfuse3-dev"; \
	command -v pkg-config >/dev/null 2>&1 || missing="$$missing pkg-config"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	[ -x /usr/sbin/fence_dummy ] || missing="$$missing fence-agents"; \
	command -v setfacl >/dev/null 2>&1 || missing="$$missing acl"; \
	command -v setfattr >/dev/null 2>&1 || missing="$$missing attr"; \
	[ -x /usr/sbin/setcap ] || missing="$$missing libcap2-bin"; \
	command -v rsync >/dev/null 2>&1 || missing="$$missing rsync"; \
	command -v git >/dev/null 2>&1 || missing="$$missing git"; \
	command -v patch >/dev/null 2>&1 || missing="$$missing patch"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	fi

# pyfuse3 is built from its source with a patch of Shoal's: without an opendir, readdir is
# told the directory's inode, so that the kernel can keep listings (src/shoal/mount/
# kernel_cache.py), and an open may ask for no FLUSH at close (FOPEN_NOFLUSH, for read-only
# handles: mount/modes.py). An unpatched pyfuse3 works too, listing every directory anew
# and flushing every handle.
# The wheel is kept (as pip keeps the wheels it builds) under the patch's checksum and the
# Python version, so that a fresh checkout on the same machine does not compile it again.
PYFUSE3 := 3.5.0
PYFUSE3_PATCH := packaging/pyfuse3.patch
PYFUSE3_BUILD := $(VENV)/pyfuse3-build

$(STAMP): pyproject.toml $(PYFUSE3_PATCH)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@wheels="$${XDG_CACHE_HOME:-$$HOME/.cache}/shoal/pyfuse3-$(PYFUSE3)-$$(sha256sum $(PYFUSE3_PATCH) | cut -c1-12)-$$($(BIN)/python -c 'import sys; print("py%d%d" % sys.version_info[:2])')"; \
	if ! ls "$$wheels"/pyfuse3-*.whl >/dev/null 2>&1; then \
	  echo "building pyfuse3 $(PYFUSE3) with $(PYFUSE3_PATCH)"; \
	  rm -rf $(PYFUSE3_BUILD) && mkdir -p $(PYFUSE3_BUILD) && \
	  $(BIN)/pip download -q --no-deps --no-binary :all: pyfuse3==$(PYFUSE3) -d $(PYFUSE3_BUILD) && \
	  tar xzf $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3).tar.gz -C $(PYFUSE3_BUILD) && \
	  patch -s -p1 -d $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3) < $(PYFUSE3_PATCH) && \
	  $(BIN)/pip wheel -q --no-deps -w $(PYFUSE3_BUILD)/wheel $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3) && \
	  mkdir -p "$$wheels" && mv $(PYFUSE3_BUILD)/wheel/pyfuse3-*.whl "$$wheels"/ && \
	  rm -rf $(PYFUSE3_BUILD) || exit 1; \
	fi; \
	$(BIN)/pip install -q --force-reinstall --no-deps "$$wheels"/pyfuse3-*.whl
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: debs $(STAMP)

# The tests that start local clusters run one at a time, each with the machine to itself
# (two of them side by side made timing-bound tests flaky: a mount slow to stop, a client
# late to a new MGS). Beside them runs a second pytest with the rest: the rig's tests, whose
# hosts live in network namespaces of their own, the tests that start no local cluster
# (unit, config, store, the configuration commands, the LUNs), and those whose cluster sees
# no fault and no clock (hostile arguments, secrets, TLS, reads, the I/O and metadata
# benchmarks' checks, POSIX and the kernel's caches through a mount, the per-host daemons,
# whose waits allow a minute); its report is printed after the first's. In both, local
# clusters' nodes are forked from a process that imported Shoal once (tests/forkserver.py):
# a test's own cluster is up in 0.5 s, not 1.25. (Not xdist's loadgroup: with
# pytest 9 it no longer groups, and spread one module's tests over two workers.)
BESIDE_TESTS := tests/rig tests/unit tests/config tests/store \
  tests/integration/test_config_cli.py tests/integration/test_lun.py \
  tests/integration/test_cli_hostile.py tests/integration/test_secrets.py \
  tests/integration/test_rpc_tls.py tests/integration/test_sendfile_reads.py \
  tests/integration/test_bench_meta.py tests/integration/test_bench_io.py \
  tests/integration/test_client_pread_into.py \
  tests/mount/test_mount_posix.py tests/mount/test_mount_special.py \
  tests/mount/test_mount_xattr.py tests/mount/test_mount_suid.py \
  tests/mount/test_mount_programs.py tests/mount/test_mount_page_cache.py \
  tests/mount/test_mount_tools_failover.py tests/integration/test_store_cluster.py \
  tests/integration/test_load_bounds.py tests/scenarios/test_silent_partner.py \
  tests/integration/test_bench_smallfiles.py tests/integration/test_bench_boot.py \
  tests/integration/test_daemons.py tests/mount/test_mount_locks.py
BESIDE_LOG := $(or $(TMPDIR),/tmp)/shoal-beside-tests.log

test: venv
	@$(BIN)/pytest -q -p no:cacheprovider --durations=10 \
	  --basetemp=$(or $(TMPDIR),/tmp)/shoal-beside-tests $(BESIDE_TESTS) > $(BESIDE_LOG) 2>&1 & \
	beside=$$!; \
	$(BIN)/pytest -q -p no:cacheprovider --durations=15 \
	  $(addprefix --ignore=,$(BESIDE_TESTS)) tests; first=$$?; \
	wait $$beside; second=$$?; echo "--- run beside them:"; cat $(BESIDE_LOG); \
	test $$first -eq 0 && test $$second -eq 0

demo: venv
	$(BIN)/shoal demo

lint: venv
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) shoal-run build src/*.egg-info
