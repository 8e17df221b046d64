# fer: facial emotion recognition on FER-2013 in plain PyTorch.  `make` lists the targets.
PYTHON   := .venv/bin/python
VENV     := .venv/installed
FER_DATA ?= data/fer2013
export FER_DATA
EPOCHS   ?=
ARGS     ?=
# A FER-2013 download for make data to unpack: make data ARCHIVE=~/Downloads/archive.zip
ARCHIVE  ?=
# The photos predict looks at: make predict IMAGES="a.jpg b.jpg".
IMAGES   ?=
# Processes for training: NPROC=2 launches through torchrun (one per GPU, or gloo on CPUs).
NPROC    ?= 1
TRAIN    = $(if $(filter-out 1,$(NPROC)),.venv/bin/torchrun --nproc_per_node=$(NPROC),$(PYTHON))
# The run that evaluate, gradcam and predict look at; default: the newest folder under runs/.
# (Folder names start with a timestamp, so the last name is the newest run.)
RUN      ?= $(shell ls -d runs/*/ 2>/dev/null | tail -n 1)
NEWEST_RUN = $$(ls -d runs/*/ | tail -n 1)
EPOCHS_FLAG = $(if $(EPOCHS),--epochs $(EPOCHS))

.DEFAULT_GOAL := help
.PHONY: help install data baseline baseline-seed feature-extract finetune compare bench evaluate test clean-cache

help:  ## list the targets and their variables
	@echo "targets:"
	@grep -E '^[a-z-]+:.*## ' Makefile | sed -E 's/^([a-z-]+):.*## (.*)/  make \1|\2/' | column -t -s '|'
	@echo "variables (make baseline EPOCHS=5):"
	@echo "  FER_DATA=$(FER_DATA)   dataset folder (Kaggle layout) or fer2013.csv"
	@echo "  ARCHIVE=file           for make data: a downloaded archive.zip, fer2013.zip, fer2013.csv or .tar.gz"
	@echo "  ARCH=$(ARCH)       for feature-extract/finetune: mobilenet_v2, resnet18 or vgg16"
	@echo "  EPOCHS=n               training epochs (default: the script's recipe)"
	@echo "  ARGS='...'             more flags for the script, e.g. ARGS='--batch-norm --lr 1e-3'"
	@echo "  RUN=runs/DIR           run folder for evaluate, gradcam, predict (default: newest, now $(or $(RUN),none))"
	@echo "  IMAGES='a.jpg b.jpg'   photos for predict"
	@echo "  NPROC=n                training processes, launched with torchrun when n > 1 (default: 1)"

install: $(VENV)  ## create .venv and install requirements.txt (again only when it changes)
$(VENV): requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -r requirements.txt
	touch $@

data: $(VENV)  ## get FER-2013 into FER_DATA: check it, else unpack ARCHIVE (or one in data/), else download it
	$(PYTHON) get_data.py $(if $(ARCHIVE),--archive "$(ARCHIVE)")

baseline: data  ## train the baseline CNN (fast recipe), then evaluate it on PrivateTest
	$(TRAIN) train_baseline.py $(EPOCHS_FLAG) $(ARGS)
	$(PYTHON) evaluate.py --run $(NEWEST_RUN)

baseline-seed: data  ## the same CNN with the seed's recipe (Adam 1e-3, plateau, 50 epochs, early stop)
	$(TRAIN) train_baseline.py --name baseline-seed --optimizer adamw --lr 1e-3 --weight-decay 0 \
	  --schedule plateau --early-stop 10 --batch-size 64 --label-smoothing 0 --epochs $(or $(EPOCHS),50) $(ARGS)
	$(PYTHON) evaluate.py --run $(NEWEST_RUN)

# Transfer learning. The MobileNetV2 ImageNet features in ../shared/weights work offline; elsewhere
# ARCH=resnet18 or vgg16 take torchvision's ImageNet weights (downloaded once into $$TORCH_HOME).
ARCH     ?= mobilenet_v2
WEIGHTS  ?= $(if $(findstring --weights none,$(ARGS)),,$(if $(wildcard ../shared/weights/$(ARCH)_imagenet_features.pth),--weights-path ../shared/weights/$(ARCH)_imagenet_features.pth))

feature-extract: data  ## ARCH's frozen ImageNet features, cached, with a new 7-class head; then evaluate
	$(TRAIN) train_transfer.py --arch $(ARCH) --mode feature $(WEIGHTS) $(EPOCHS_FLAG) $(ARGS)
	$(PYTHON) evaluate.py --run $(NEWEST_RUN)

finetune: data  ## fine-tune ARCH from ImageNet weights (ARGS='--weights none' from scratch); then evaluate
	$(TRAIN) train_transfer.py --arch $(ARCH) --mode finetune $(WEIGHTS) $(EPOCHS_FLAG) $(ARGS)
	$(PYTHON) evaluate.py --run $(NEWEST_RUN)

compare: $(VENV)  ## table (docs/compare.md) and bar chart (docs/compare.png) of the evaluated runs
	$(PYTHON) compare.py $(ARGS)

bench: data  ## speed, side by side in one run: data pipeline, training step, evaluation (bench.json)
	$(PYTHON) bench.py $(ARGS)

evaluate: $(VENV)  ## evaluate RUN on PrivateTest (ARGS='--split val' for PublicTest)
	@test -n "$(RUN)" || { echo "no run folder under runs/: train one first (make baseline)"; exit 1; }
	$(PYTHON) evaluate.py --run $(RUN) $(ARGS)

.PHONY: gradcam
gradcam: $(VENV)  ## Grad-CAM of RUN: per-class grids, class-mean maps (ARGS='--image face.jpg')
	@test -n "$(RUN)" || { echo "no run folder under runs/: train one first (make baseline)"; exit 1; }
	$(PYTHON) gradcam.py --run $(RUN) $(ARGS)

.PHONY: install-predict predict
install-predict: $(VENV)  ## also install OpenCV, which predict needs to find faces in photos
	.venv/bin/pip install -r requirements-predict.txt

predict: $(VENV)  ## emotions of the faces in IMAGES, with RUN's model (ARGS='--tta --no-detect ...')
	@test -n "$(RUN)" || { echo "no run folder under runs/: train one first (make baseline)"; exit 1; }
	@test -n "$(IMAGES)" || { echo "name the photos: make predict IMAGES='a.jpg b.jpg'"; exit 1; }
	$(PYTHON) predict.py --run $(RUN) $(ARGS) $(IMAGES)

test: $(VENV)  ## run the test suite (uses the real data too when FER_DATA names a copy)
	$(PYTHON) -m pytest -q tests

clean-cache:  ## delete the decoded-dataset cache under data/cache
	rm -rf data/cache
