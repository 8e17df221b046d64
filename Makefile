# fer: facial emotion recognition on FER-2013 in plain PyTorch.  `make` lists the targets.
PYTHON   := .venv/bin/python
VENV     := .venv/installed
FER_DATA ?= data/fer2013
export FER_DATA
EPOCHS   ?=
ARGS     ?=
# The run that evaluate/gradcam look at; default: the newest folder under runs/.
RUN      ?= $(shell ls -td runs/*/ 2>/dev/null | head -n 1)
NEWEST_RUN = $$(ls -td runs/*/ | head -n 1)
EPOCHS_FLAG = $(if $(EPOCHS),--epochs $(EPOCHS))

.DEFAULT_GOAL := help
.PHONY: help install data baseline baseline-seed evaluate test clean-cache

help:  ## list the targets and their variables
	@echo "targets:"
	@grep -E '^[a-z-]+:.*## ' Makefile | sed -E 's/^([a-z-]+):.*## (.*)/  make \1|\2/' | column -t -s '|'
	@echo "variables (make baseline EPOCHS=5):"
	@echo "  FER_DATA=$(FER_DATA)   dataset folder (Kaggle layout) or fer2013.csv"
	@echo "  EPOCHS=n               training epochs (default: the script's recipe)"
	@echo "  ARGS='...'             more flags for the script, e.g. ARGS='--batch-norm --lr 1e-3'"
	@echo "  RUN=runs/DIR           run folder for evaluate (default: newest, now $(or $(RUN),none))"

install: $(VENV)  ## create .venv and install requirements.txt (again only when it changes)
$(VENV): requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -r requirements.txt
	touch $@

data: $(VENV)  ## check the dataset at FER_DATA, or say where to get it
	$(PYTHON) get_data.py

baseline: data  ## train the baseline CNN (fast recipe), then evaluate it on PrivateTest
	$(PYTHON) train_baseline.py $(EPOCHS_FLAG) $(ARGS)
	$(PYTHON) evaluate.py --run $(NEWEST_RUN)

baseline-seed: data  ## the same CNN with the seed's recipe (Adam 1e-3, plateau, 50 epochs, early stop)
	$(PYTHON) train_baseline.py --name baseline-seed --optimizer adamw --lr 1e-3 --weight-decay 0 \
	  --schedule plateau --early-stop 10 --batch-size 64 --label-smoothing 0 --epochs $(or $(EPOCHS),50) $(ARGS)
	$(PYTHON) evaluate.py --run $(NEWEST_RUN)

evaluate: $(VENV)  ## evaluate RUN on PrivateTest (ARGS='--split val' for PublicTest)
	@test -n "$(RUN)" || { echo "no run folder under runs/: train one first (make baseline)"; exit 1; }
	$(PYTHON) evaluate.py --run $(RUN) $(ARGS)

test: $(VENV)  ## run the test suite (uses the real data too when FER_DATA names a copy)
	$(PYTHON) -m pytest -q tests

clean-cache:  ## delete the decoded-dataset cache under data/cache
	rm -rf data/cache
