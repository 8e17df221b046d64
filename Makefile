# fer: facial emotion recognition on FER-2013 in plain PyTorch.  `make` lists the targets.
PYTHON   := .venv/bin/python
VENV     := .venv/installed
FER_DATA ?= data/fer2013
export FER_DATA
EPOCHS   ?=
ARGS     ?=
# A FER-2013 download for make data to unpack: make data ARCHIVE=~/Downloads/archive.zip
ARCHIVE  ?=
# FERPlus's fer2013new.csv, for make data offline: make data FERPLUS=~/Downloads/fer2013new.csv
FERPLUS  ?=
# The photos predict looks at: make predict IMAGES="a.jpg b.jpg".
IMAGES   ?=
# Processes for training: NPROC=2 launches through torchrun (one per GPU, or gloo on CPUs).
NPROC    ?= 1
TRAIN    = $(if $(filter-out 1,$(NPROC)),.venv/bin/torchrun --nproc_per_node=$(NPROC),$(PYTHON))
# The run that evaluate looks at; default: the newest trained run under runs/ (one with a best.pt:
# an ensemble's folder has none). Folder names start with a timestamp, so the last name is the newest;
# runs/release is a copy.
RUN      ?= $(patsubst %/best.pt,%,$(lastword $(sort $(wildcard runs/[0-9]*/best.pt))))
# Each training target names its new run folder (runs/<timestamp>-<name>) once, trains into it with
# --run-dir and evaluates exactly that folder: the newest under runs/ may be another run started
# meanwhile. The commands are one shell line joined by \, since each recipe line gets its own shell.
STAMP    = $$(date +%Y%m%d-%H%M%S)
EPOCHS_FLAG = $(if $(EPOCHS),--epochs $(EPOCHS))

.DEFAULT_GOAL := help
.PHONY: help install data baseline baseline-seed vggnet ensemble choose-ensemble feature-extract finetune transfer-curve compare bench evaluate release test clean-cache

help:  ## list the targets and their variables
	@echo "targets:"
	@grep -E '^[a-z-]+:.*## ' Makefile | sed -E 's/^([a-z-]+):.*## (.*)/  make \1|\2/' | column -t -s '|'
	@echo "variables (make baseline EPOCHS=5):"
	@echo "  FER_DATA=$(FER_DATA)   dataset folder (Kaggle layout) or fer2013.csv"
	@echo "  ARCHIVE=file           for make data: a downloaded archive.zip, fer2013.zip, fer2013.csv or .tar.gz"
	@echo "  FERPLUS=file           for make data offline: FERPlus's fer2013new.csv (the FER+ crowd votes)"
	@echo "  ARCH=$(ARCH)       for feature-extract/finetune: mobilenet_v2, resnet18 or vgg16"
	@echo "  FER_WEIGHTS=dir        for feature-extract/finetune: a folder with <ARCH>_imagenet_features.pth (offline)"
	@echo "  EPOCHS=n               training epochs (default: the script's recipe)"
	@echo "  ARGS='...'             more flags for the script, e.g. ARGS='--seed 1 --lr 1e-3'"
	@echo "  RUN=runs/DIR           run folder for evaluate (default: newest trained, now $(or $(RUN),none)) and release;"
	@echo "                         for gradcam, predict, export (default: runs/release, the released model)"
	@echo "  IMAGES='a.jpg clips/'  photos, videos and folders for predict"
	@echo "  RUNS='runs/A runs/B'   for ensemble: the runs whose probabilities it averages; for choose-ensemble: the candidates"
	@echo "  CURVE_K='$(CURVE_K)'  for transfer-curve: the numbers of top blocks that train"
	@echo "  NPROC=n                training processes, launched with torchrun when n > 1 (default: 1)"

install: $(VENV)  ## create .venv and install requirements.txt (again only when it changes)
$(VENV): requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -r requirements.txt
	touch $@

data: $(VENV)  ## get FER-2013 into FER_DATA: check it, else unpack ARCHIVE (or one in data/), else download it
	$(PYTHON) get_data.py $(if $(ARCHIVE),--archive "$(ARCHIVE)") $(if $(FERPLUS),--ferplus "$(FERPLUS)")

baseline: data  ## train the baseline CNN (fast recipe), then evaluate it on PrivateTest
	run=runs/$(STAMP)-baseline && \
	$(TRAIN) train_baseline.py --run-dir "$$run" $(EPOCHS_FLAG) $(ARGS) && \
	$(PYTHON) evaluate.py --run "$$run"

baseline-seed: data  ## the same CNN with the original project's recipe (Adam 1e-3, plateau, 50 epochs, early stop)
	run=runs/$(STAMP)-baseline-seed && \
	$(TRAIN) train_baseline.py --run-dir "$$run" --name baseline-seed --optimizer adamw --lr 1e-3 --weight-decay 0 \
	  --schedule plateau --early-stop 10 --batch-size 64 --label-smoothing 0 --epochs $(or $(EPOCHS),50) $(ARGS) && \
	$(PYTHON) evaluate.py --run "$$run"

vggnet: data  ## train VGGNet, the network designed for 48x48 faces, with its recipe; then evaluate
	run=runs/$(STAMP)-vggnet && \
	$(TRAIN) train_baseline.py --arch vggnet --run-dir "$$run" $(EPOCHS_FLAG) $(ARGS) && \
	$(PYTHON) evaluate.py --run "$$run"

# The runs an ensemble averages: make ensemble RUNS="runs/A runs/B runs/C".
RUNS     ?=
ensemble: $(VENV)  ## evaluate the ensemble of RUNS (the mean of their probabilities) into a new runs/ folder
	@test -n "$(RUNS)" || { echo "name the runs: make ensemble RUNS='runs/A runs/B'"; exit 1; }
	$(PYTHON) evaluate.py $(foreach run,$(RUNS),--run $(run)) $(ARGS)

choose-ensemble: $(VENV)  ## choose an ensemble among RUNS on PublicTest (ARGS='--budget 180': training minutes)
	@test -n "$(RUNS)" || { echo "name the runs: make choose-ensemble RUNS='runs/A runs/B runs/C'"; exit 1; }
	$(PYTHON) choose_ensemble.py $(RUNS) $(ARGS)

# Transfer learning. Offline ImageNet weights: FER_WEIGHTS names a folder holding <ARCH>_imagenet_features.pth
# (a state dict of torchvision's network), e.g. make finetune FER_WEIGHTS=~/weights; without one, torchvision
# downloads its ImageNet weights once into $$TORCH_HOME.
ARCH     ?= mobilenet_v2
FER_WEIGHTS ?=
WEIGHTS_FILE = $(if $(FER_WEIGHTS),$(wildcard $(FER_WEIGHTS)/$(ARCH)_imagenet_features.pth))
WEIGHTS  ?= $(if $(findstring --weights none,$(ARGS)),,$(if $(WEIGHTS_FILE),--weights-path $(WEIGHTS_FILE)))
# The end of the run folder's name, as train_transfer.py names its runs: mobilenet_v2-finetune-pretrained.
START    = $(if $(findstring --weights none,$(ARGS)),scratch,pretrained)

feature-extract: data  ## ARCH's frozen ImageNet features, cached, with a new 7-class head; then evaluate
	run=runs/$(STAMP)-$(ARCH)-feature-$(START) && \
	$(TRAIN) train_transfer.py --run-dir "$$run" --arch $(ARCH) --mode feature $(WEIGHTS) $(EPOCHS_FLAG) $(ARGS) && \
	$(PYTHON) evaluate.py --run "$$run"

finetune: data  ## fine-tune ARCH from ImageNet weights (ARGS='--weights none' from scratch); then evaluate
	run=runs/$(STAMP)-$(ARCH)-finetune-$(START) && \
	$(TRAIN) train_transfer.py --run-dir "$$run" --arch $(ARCH) --mode finetune $(WEIGHTS) $(EPOCHS_FLAG) $(ARGS) && \
	$(PYTHON) evaluate.py --run "$$run"

# The transfer curve: MobileNetV2 from ImageNet with its top k blocks training, the rest frozen, at one
# budget (EPOCHS, default 6), on a stratified 10% and on all of the training images, beside the baseline
# CNN on the same 10% (at the same epochs, and at its own recipe's); then its table and chart
# (runs/curve.md, runs/curve.png).
CURVE_K  ?= 0 1 2 4 7 12 19
transfer-curve: data  ## train and evaluate every point of the transfer curve (hours), then its table and chart
	for fraction in 0.1 1.0; do for k in $(CURVE_K); do \
	  run=runs/$(STAMP)-curve-k$$k-data$$fraction && \
	  $(TRAIN) train_transfer.py --run-dir "$$run" --arch mobilenet_v2 --mode finetune --unfreeze $$k $(WEIGHTS) \
	    --epochs $(or $(EPOCHS),6) --train-fraction $$fraction $(ARGS) && \
	  $(PYTHON) evaluate.py --single-view --run "$$run" || exit 1; done; done
	for epochs in $(or $(EPOCHS),6) ""; do \
	  run=runs/$(STAMP)-curve-baseline$${epochs:+-$${epochs}ep}-data0.1 && \
	  $(TRAIN) train_baseline.py --run-dir "$$run" --train-fraction 0.1 $${epochs:+--epochs $$epochs} && \
	  $(PYTHON) evaluate.py --single-view --run "$$run" || exit 1; done
	$(PYTHON) compare.py --curve --runs runs/*-curve-*

compare: $(VENV)  ## table (runs/compare.md) and charts (runs/compare.png, time_to_accuracy.png) of the evaluated runs
	$(PYTHON) compare.py $(ARGS)

bench: data  ## speed, side by side in one run: data pipeline, training step, evaluation (bench.json)
	$(PYTHON) bench.py $(ARGS)

evaluate: $(VENV)  ## evaluate RUN on PrivateTest (ARGS='--split val' for PublicTest)
	@test -n "$(RUN)" || { echo "no run folder under runs/: train one first (make baseline)"; exit 1; }
	$(PYTHON) evaluate.py --run $(RUN) $(ARGS)

.PHONY: install-predict predict
PREDICT_VENV := .venv/installed-predict
install-predict: $(PREDICT_VENV)  ## also install OpenCV (predict finds faces with it, reads videos)
$(PREDICT_VENV): $(VENV) requirements-predict.txt
	.venv/bin/pip install -r requirements-predict.txt
	touch $@

# predict (and gradcam, export) use the released model (runs/release) unless RUN is named on the command
# line or in the environment: make predict RUN=runs/DIR IMAGES=... (predict also RUN="A B C": their ensemble)
PREDICT_RUN = $(if $(filter command line environment,$(origin RUN)),$(foreach run,$(RUN),--run $(run)))
ONE_RUN = $(if $(filter command line environment,$(origin RUN)),--run $(RUN))

predict: $(PREDICT_VENV)  ## emotions of the faces in IMAGES: photos, videos, folders (RUN="A B": an ensemble)
	@test -n "$(IMAGES)" || { echo "name the photos, videos or folders: make predict IMAGES='a.jpg clips/'"; exit 1; }
	$(PYTHON) predict.py $(PREDICT_RUN) $(ARGS) $(IMAGES)

# gradcam.py finds the faces of --image photo.jpg as predict.py does, with OpenCV.
.PHONY: gradcam
gradcam: $(PREDICT_VENV)  ## Grad-CAM of RUN (default: runs/release) into gradcam/<run>/: class grids, class-mean maps (ARGS='--image photo.jpg')
	$(PYTHON) gradcam.py $(ONE_RUN) $(ARGS)

# The released model, runs/release/ (committed): made from a run folder, exported to ONNX.
.PHONY: install-export export
EXPORT_VENV := .venv/installed-export
install-export: $(EXPORT_VENV)  ## also install onnx, onnxscript and onnxruntime, which export needs
$(EXPORT_VENV): $(VENV) requirements-export.txt
	.venv/bin/pip install -r requirements-export.txt
	touch $@

release: $(VENV)  ## make RUN the released model runs/release/ (RUN="A B C": the seed best on PublicTest)
	@test "$(origin RUN)" != file || { echo "name the run to release: make release RUN=runs/DIR"; exit 1; }
	$(PYTHON) release.py $(foreach run,$(RUN),--run $(run)) $(ARGS)

export: $(EXPORT_VENV)  ## RUN (default: runs/release) to RUN/model.onnx, checked against PyTorch with onnxruntime
	$(PYTHON) export.py $(ONE_RUN) $(ARGS)

test: $(VENV)  ## run the test suite (uses the real data too when FER_DATA names a copy)
	$(PYTHON) -m pytest -q tests

clean-cache:  ## delete the decoded-dataset cache under data/cache
	rm -rf data/cache
