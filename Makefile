# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TORCH_VERSION)

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/marketgpt data download --case sample
	$(BIN)/marketgpt data info --case sample
	@run=checkpoints/demo_$$(date +%Y%m%d_%H%M%S); set -e; \
	$(BIN)/marketgpt train configs/sample.json --run-dir $$run; \
	$(BIN)/marketgpt forecast $$run --horizon 21 -o $$run/forecast.parquet; \
	$(BIN)/marketgpt signals $$run --horizons 1d,1w,1m --samples 256 -o $$run/signals.parquet --charts $$run/signal_charts; \
	$(BIN)/marketgpt backtest $$run --horizon 1w --start 2018-10-01 --samples 32 --benchmarks SPX,IXIC \
		--benchmark-universe sample --provider sample -o $$run/backtest

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25

bench: $(STAMP)
	$(BIN)/python bench/data_load.py
	$(BIN)/python bench/tokenizer.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/time_to_loss.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/backtest.py
	$(BIN)/python bench/skill.py
	$(BIN)/python bench/horizons.py
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
