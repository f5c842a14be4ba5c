# The README's two commands: `make run` (the main job) and `make test` (lint + test suite).
# Both create .venv on first use and install everything they need into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
NP     ?= 2
CONFIG ?= configs/demo.yaml
RUN_DIR ?= runs/$(basename $(notdir $(CONFIG)))
MPIRUN := $(BIN)/mpiexec -n $(NP) $(BIN)/python -m mpi4py -m hpcflow

.PHONY: install horovod run test lint bench docs clean

# CPU install path: torch pinned to the CPU wheel of these machines; the package itself asks
# for a range (setup.py) so that clusters keep their own CUDA/ROCm/XPU builds. mpich provides
# mpiexec locally; on clusters use the site MPI instead (README.md).
$(BIN)/.installed: setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check mpich -e '.[mpi,plot,test]'
	touch $@

install: $(BIN)/.installed

# Horovod is an optional backend for users, but the test suite tests it for real: it is built
# against the venv's torch and MPI (launch/install_horovod.sh; a few minutes the first time).
# The built wheel is cached in ~/.cache/hpcflow/wheels/ (keyed by torch, Python and MPI), so a
# re-created venv installs it in seconds; with horovod importable the script returns at once.
horovod: install
	bash launch/install_horovod.sh $(VENV)

# The main job: train, sample and analyze $(CONFIG) on $(NP) ranks. Running it again resumes
# (or, when finished, only re-reports); `make run CONFIG=configs/su2_2d.yaml NP=4`.
run: install
	$(BIN)/hpcflow info
	$(MPIRUN) check $(CONFIG) --n 128
	$(MPIRUN) train $(CONFIG) -o $(RUN_DIR)
	$(MPIRUN) sample $(RUN_DIR)
	$(BIN)/hpcflow analyze $(RUN_DIR)/samples/samples.h5

lint: install
	$(BIN)/ruff check .

# pytest exits 5 when it collects nothing: that is a broken suite, not a pass.
test: lint horovod
	$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The docs: docs/config.md from the typed configuration, the API pages from the docstrings
# (docs/api/, offline, not committed). docs/physics.md and docs/file-format.md are written by hand.
API_MODULES = $$($(BIN)/python -c "import pkgutil, hpcflow; print(*['hpcflow'] + [m.name \
	for m in pkgutil.walk_packages(hpcflow.__path__, 'hpcflow.') if m.name != 'hpcflow.__main__'])")
docs: install
	$(BIN)/python -c "from hpcflow.app.config import config_reference as r; print(r(), end='')" \
		> docs/config.md
	$(BIN)/pdoc --docformat restructuredtext -o docs/api $(API_MODULES)
	@echo "docs: docs/config.md and docs/api/index.html"

bench: install
	$(BIN)/python perf/bench_loops.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache docs/api
