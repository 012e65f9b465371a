# One command to set up and train, one to set up and test. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
DATA_ROOT ?= ../shared/data
ARGS ?=

.PHONY: setup train test test-slow clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	touch $@

train: setup  ## the default job: an MLP on MNIST (make train ARGS="model=cnn trainer.epochs=3")
	DATA_ROOT=$(DATA_ROOT) $(VENV)/bin/python train.py $(ARGS)

test: setup  ## the fast suite (slow tests excluded), one worker per core, each test module on one worker
	DATA_ROOT=$(DATA_ROOT) $(VENV)/bin/python -m pytest -n auto --dist loadscope $(ARGS)

test-slow: setup  ## real-data runs: minutes each
	DATA_ROOT=$(DATA_ROOT) $(VENV)/bin/python -m pytest -m slow $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun
