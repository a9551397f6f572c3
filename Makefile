# kdcli: the demo, the tests, and one target per experiment of the seed documents.
# `make demo` and `make test` work on a fresh clone with only python3 and make.
# Seed targets read data sets from DATA_DIR (add DOWNLOAD=--download on a machine with network)
# and need a GPU to finish in reasonable time; without the data they stop with a one-line message.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
DATA_DIR ?= data
DOWNLOAD ?=
DEVICE   ?= auto
SEEDS    ?= 0 1 2 3 4
REPORTS  ?= reports
export KDCLI_STORE ?= artifacts

KD   := $(BIN)/kdcli
DATA  = --data-dir $(DATA_DIR) $(DOWNLOAD) --device $(DEVICE)

.PHONY: install demo demo-tiny demo-choice demo-lm demo-lm-choice test test-unit test-cli test-e2e lint clean cifar100-kd-bench methods-digits \
        seed000-cifar10 seed000-cifar100 seed000-cifar100-resnet18 seed002-hinton seed003-kl seed004-mnist \
        seed001-regression

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]' -c constraints.txt
	touch $(STAMP)

# The tests in layers: tests/unit (losses, store, stats, engine parts), tests/cli (one command through
# Typer's CliRunner on tiny data), tests/e2e (pipelines, faults, torchrun, Ray, walkthrough); `make test` runs all.
test: install
	$(BIN)/python -m pytest

test-unit test-cli test-e2e: install
	$(BIN)/python -m pytest tests/$(@:test-%=%)

lint: install
	$(BIN)/ruff check kdcli tests bench

clean:
	rm -rf $(VENV) artifacts $(REPORTS)

# Speed and memory, measured side by side in one run (bench/bench.py): prints one table of ratios
# and writes it to $(REPORTS)/bench.md. About 5 minutes on a 2-core CPU before the language-model rows
# L1-L4 (bench/lm_bench.py, several minutes more: L4 builds a 10x corpus and its table); adds CUDA rows on a GPU.
.PHONY: bench
bench: install
	$(BIN)/python bench/bench.py --out $(REPORTS)/bench.md

# Every CUDA path once (issue 14), at most 8 minutes: prints one table, writes $(REPORTS)/gpu-check.md,
# exits non-zero on any failure. Without a GPU it runs the CPU-safe checks and names the skipped ones.
.PHONY: gpu-check
gpu-check: install
	$(BIN)/python bench/gpu_check.py --out $(REPORTS)/gpu-check.md

# The main job on the embedded digits data: teacher, logit table, baseline and distilled student
# over SEEDS (same seed = same initial weights, batches and augmentation; the two run side by side;
# every run on one torch thread, so the machine's core count does not change the numbers), then the
# paired one-sided test. The student and recipe were chosen on validation by `make demo-choice` (ten
# other train/validation splits, seeds 101-110; bench/demo_choice.md): digits-student-l, 4.5k params
# (1/12 of the teacher), Adam 3e-3 at a constant rate for 200 epochs (the best validation-loss epoch
# kept), KD T 4, alpha 0.5. The test set chooses nothing. The per-seed lines say which seeds
# distillation did not win.
# `make demo SEEDS="20 21 22 23 24 25 26 27 28 29"` checks the result on seeds never used to choose.
DEMO_STUDENT ?= digits-student-l
DEMO_RECIPE  ?= --epochs 200 --patience 0
DEMO_KD      ?= --temperature 4 --alpha 0.5
DEMO_NAME    ?= demo
DEMO_TEACHER  = KDCLI_THREADS=1 $(KD) train-teacher --name demo/teacher -q --device $(DEVICE); \
	KDCLI_THREADS=1 $(KD) cache-logits demo/teacher --name demo/logits -q --device $(DEVICE)
demo: install
	@set -e; \
	echo "== teacher and its logit table"; $(DEMO_TEACHER); \
	base=; kd=; \
	for s in $(SEEDS); do \
	  echo "== seed $$s: baseline and distilled $(DEMO_STUDENT)"; \
	  KDCLI_THREADS=1 $(KD) baseline --model $(DEMO_STUDENT) $(DEMO_RECIPE) --seed $$s --name $(DEMO_NAME)/baseline-s$$s \
	    -q --device $(DEVICE) >/dev/null & pid=$$!; \
	  KDCLI_THREADS=1 $(KD) distill --logits demo/logits --model $(DEMO_STUDENT) $(DEMO_RECIPE) $(DEMO_KD) --seed $$s \
	    --name $(DEMO_NAME)/kd-s$$s -q --device $(DEVICE) >/dev/null; wait $$pid; \
	  base=$${base:+$$base,}$(DEMO_NAME)/baseline-s$$s; kd=$${kd:+$$kd,}$(DEMO_NAME)/kd-s$$s; \
	done; \
	$(KD) compare "$$base" "$$kd" --label baseline --label distilled --reference demo/teacher \
	  --plot $(REPORTS)/$(DEMO_NAME)-compare.png; \
	$(BIN)/python bench/demo_seeds.py "$$base" "$$kd"

# The same teacher and recipe with the 1.25k-param digits-student (1/42 of the teacher): it gains
# less than the demo's student and less reliably (README, "When distillation helps").
demo-tiny:
	@$(MAKE) --no-print-directory demo DEMO_STUDENT=digits-student DEMO_NAME=demo-tiny

# The language-model demo on the embedded python-docs corpus (bytes, context 128): a teacher
# (lm-teacher, 0.46M params, 10 epochs), its topk:32 table, then over SEEDS a baseline and a distilled
# lm-student (41k params, 1/11 of the teacher) side by side (same seed = same initial weights and windows);
# every run on one torch thread, so the core count does not change the numbers; then the paired one-sided
# test on test bits per byte with per-seed lines. The distillation recipe (LM_KD) was chosen on validation
# by `make demo-lm-choice` (bench/demo_lm_choice.md).
LM_DATA    ?= --dataset python-docs
LM_TEACHER ?= --model lm-teacher --batch-size 16 --epochs 10 --patience 0
LM_STUDENT ?= lm-student
LM_RECIPE  ?= --batch-size 16 --epochs 8 --patience 0
LM_KD      ?= --temperature 1 --alpha 0.5
LM_NAME    ?= demo-lm
LM_TABLE    = KDCLI_THREADS=1 $(KD) train-teacher $(LM_DATA) $(LM_TEACHER) --name demo-lm/teacher -q --device $(DEVICE); \
	KDCLI_THREADS=1 $(KD) cache-logits demo-lm/teacher $(LM_DATA) --table topk:32 --name demo-lm/table -q --device $(DEVICE)
demo-lm: install
	@set -e; \
	echo "== teacher and its topk:32 table"; $(LM_TABLE); \
	base=; kd=; \
	for s in $(SEEDS); do \
	  echo "== seed $$s: baseline and distilled $(LM_STUDENT)"; \
	  KDCLI_THREADS=1 $(KD) baseline $(LM_DATA) --model $(LM_STUDENT) $(LM_RECIPE) --seed $$s \
	    --name $(LM_NAME)/baseline-s$$s -q --device $(DEVICE) >/dev/null & pid=$$!; \
	  KDCLI_THREADS=1 $(KD) distill $(LM_DATA) --logits demo-lm/table --model $(LM_STUDENT) $(LM_RECIPE) $(LM_KD) \
	    --seed $$s --name $(LM_NAME)/kd-s$$s -q --device $(DEVICE) >/dev/null; wait $$pid; \
	  base=$${base:+$$base,}$(LM_NAME)/baseline-s$$s; kd=$${kd:+$$kd,}$(LM_NAME)/kd-s$$s; \
	done; \
	$(KD) compare "$$base" "$$kd" --label baseline --label distilled --reference demo-lm/teacher \
	  --plot $(REPORTS)/$(LM_NAME)-compare.png; \
	$(BIN)/python bench/demo_seeds.py "$$base" "$$kd" --metric test_bpb

# How demo-lm's recipe was chosen, on validation only: the demo's teacher and table, one sweep of
# distilled students over temperature and alpha and one of baselines, on seeds 100-102 (never reported
# by the demo); the lowest mean val_bpb wins. Writes bench/demo_lm_choice.md.
LM_CHOICE_SEEDS ?= 100-102
LM_CHOICE_KD     = sweep distill $(LM_DATA) --logits demo-lm/table --model $(LM_STUDENT) $(LM_RECIPE) \
	--grid temperature=1,2 --grid alpha=0,0.5 --seeds $(LM_CHOICE_SEEDS) --select val_bpb --jobs 2 \
	--name demo-lm-choice/kd -q --device $(DEVICE)
LM_CHOICE_BASE   = sweep baseline $(LM_DATA) --model $(LM_STUDENT) $(LM_RECIPE) --seeds $(LM_CHOICE_SEEDS) \
	--select val_bpb --jobs 2 --name demo-lm-choice/baseline -q --device $(DEVICE)
demo-lm-choice: install
	@set -e; echo "== the demo's teacher and table"; $(LM_TABLE); \
	echo "== distilled and scratch students on seeds $(LM_CHOICE_SEEDS)"; \
	KDCLI_THREADS=1 $(KD) $(LM_CHOICE_KD) >/dev/null; KDCLI_THREADS=1 $(KD) $(LM_CHOICE_BASE) >/dev/null; \
	$(BIN)/python bench/demo_lm_choice.py --command '`make demo-lm-choice` (kdcli $(LM_CHOICE_KD); kdcli $(LM_CHOICE_BASE))'

# How the demo's student and recipe were chosen, on validation only: for each of CHOICE_SPLITS (the
# demo's own is split 0) a teacher trained on that split's training part, its logit table, one sweep of
# distilled students (bench/demo_choice_kd.yaml, seed 100 + split) and one of the same students from
# scratch; the lowest mean validation cross-entropy over the splits wins. Writes bench/demo_choice.md.
CHOICE_SPLITS ?= 1 2 3 4 5 6 7 8 9 10
CHOICE_SPLIT  = --split-seed $$k -q --device $(DEVICE)
CHOICE_KD     = sweep --spec bench/demo_choice_kd.yaml --set logits=demo-choice/logits-split$$k --set split_seed=$$k \
	--seeds $$((100 + k)) --name demo-choice/kd-split$$k --jobs 2 -q --device $(DEVICE)
CHOICE_BASE   = sweep --spec bench/demo_choice_baseline.yaml --set split_seed=$$k --seeds $$((100 + k)) \
	--name demo-choice/baseline-split$$k --jobs 2 -q --device $(DEVICE)
demo-choice: install
	@set -e; for k in $(CHOICE_SPLITS); do \
	  echo "== split $$k: teacher, logits, distilled and scratch students"; \
	  KDCLI_THREADS=1 $(KD) train-teacher --name demo-choice/teacher-split$$k $(CHOICE_SPLIT); \
	  KDCLI_THREADS=1 $(KD) cache-logits demo-choice/teacher-split$$k --name demo-choice/logits-split$$k $(CHOICE_SPLIT); \
	  $(KD) $(CHOICE_KD) >/dev/null; $(KD) $(CHOICE_BASE) >/dev/null; \
	done; \
	$(BIN)/python bench/demo_choice.py --splits "$(CHOICE_SPLITS)" --out bench/demo_choice.md \
	  --command '`make demo-choice` (per split k: train-teacher and cache-logits with --split-seed k, then sweeps of bench/demo_choice_kd.yaml and bench/demo_choice_baseline.yaml with --set split_seed=k --seeds 100+k)'

# Seed 000, CIFAR-10: pretrained ResNet-56 (chenyaofo) -> small CNN, Adam 1e-3, batch 64, T=10,
# alpha=0.2 (CE weight), early stopping patience 5 on a 45k/5k split; no augmentation; paired t-test.
# TEACHER may name a local checkpoint in chenyaofo's key layout instead of torch.hub.
TEACHER_C10 ?= torchhub:chenyaofo/pytorch-cifar-models:cifar10_resnet56 --trust-remote-code
S000 = --optimizer adam --lr 0.001 --batch-size 64 --patience 5 --augment none --split-seed 0
seed000-cifar10: install
	@set -e; \
	$(KD) import-teacher $(TEACHER_C10) --model resnet56 --dataset cifar10 $(DATA) --name s000c10/teacher; \
	$(KD) cache-logits s000c10/teacher --dataset cifar10 $(DATA) --name s000c10/logits; \
	for s in $(SEEDS); do \
	  $(KD) baseline --dataset cifar10 --model cnn-small --epochs 20 $(S000) --seed $$s $(DATA) --name s000c10/baseline-s$$s; \
	  $(KD) distill --dataset cifar10 --model cnn-small --epochs 20 $(S000) --seed $$s $(DATA) \
	    --logits s000c10/logits --temperature 10 --alpha 0.2 --name s000c10/kd-s$$s; \
	done; \
	$(KD) compare 's000c10/baseline-s*' 's000c10/kd-s*' --label baseline --label kd --reference s000c10/teacher

# Seed 000, CIFAR-100: HF ResNet-50 teacher (inputs resized to 224) -> logit lookup table ->
# small CNN (32/64, fc 512), 30 epochs, patience 5, split seed 80.
TEACHER_C100 ?= hf:jialicheng/cifar100-resnet-50
seed000-cifar100: install
	@set -e; \
	$(KD) import-teacher $(TEACHER_C100) --dataset cifar100 --split-seed 80 $(DATA) --name s000c100/teacher; \
	$(KD) cache-logits s000c100/teacher --dataset cifar100 --split-seed 80 $(DATA) --name s000c100/logits; \
	for s in $(SEEDS); do \
	  $(KD) baseline --dataset cifar100 --model cnn-medium --epochs 30 $(S000) --split-seed 80 --seed $$s $(DATA) \
	    --name s000c100/baseline-s$$s; \
	  $(KD) distill --dataset cifar100 --model cnn-medium --epochs 30 $(S000) --split-seed 80 --seed $$s $(DATA) \
	    --logits s000c100/logits --temperature 10 --alpha 0.2 --name s000c100/kd-s$$s; \
	done; \
	$(KD) compare 's000c100/baseline-s*' 's000c100/kd-s*' --label baseline --label kd --reference s000c100/teacher

# Seed 000, CIFAR-100 with a ResNet-18 student (CIFAR stem): crop+flip augmentation on the fly with
# the clean-image table, cosine LR over 1000 epochs, patience 10, split seed 45.
S000R18 = --model resnet18 --epochs 1000 --patience 10 --scheduler cosine --optimizer adam --lr 0.001 \
          --batch-size 64 --augment crop:4,flip --split-seed 45
seed000-cifar100-resnet18: install
	@set -e; \
	$(KD) import-teacher $(TEACHER_C100) --dataset cifar100 --split-seed 45 $(DATA) --name s000r18/teacher; \
	$(KD) cache-logits s000r18/teacher --dataset cifar100 --split-seed 45 $(DATA) --name s000r18/logits; \
	for s in $(SEEDS); do \
	  $(KD) baseline --dataset cifar100 $(S000R18) --seed $$s $(DATA) --name s000r18/baseline-s$$s; \
	  $(KD) distill --dataset cifar100 $(S000R18) --seed $$s $(DATA) --logits s000r18/logits \
	    --temperature 10 --alpha 0.2 --name s000r18/kd-s$$s; \
	done; \
	$(KD) compare 's000r18/baseline-s*' 's000r18/kd-s*' --label baseline --label kd --reference s000r18/teacher

# Seed 002, Hinton's soft-label-only student: ResNet-18 teacher on CIFAR-10 for 10 epochs, then a
# ResNet-18 student trained on the teacher's logits alone (alpha=0: labels never used), 10 epochs.
# The seed gives no optimizer or temperature: Adam 1e-3 and T=4 are kdcli's choices.
S002 = --dataset cifar10 --model resnet18 --epochs 10 --patience 0 --optimizer adam --lr 0.001 --batch-size 128
seed002-hinton: install
	@set -e; \
	$(KD) train-teacher $(S002) $(DATA) --name s002/teacher; \
	$(KD) cache-logits s002/teacher --dataset cifar10 $(DATA) --name s002/logits; \
	for s in $(SEEDS); do \
	  $(KD) distill $(S002) --logits s002/logits --alpha 0 --temperature 4 --seed $$s $(DATA) --name s002/soft-only-s$$s; \
	done

# Seed 003: 3-block CNN teacher (SGD momentum 0.9, weight decay 5e-4, cosine LR) on CIFAR-10; the
# student trained with MSE on one-hot labels vs with KD (CE + T^2 KL). Epochs, lr, T and alpha are
# not in the seed: 30 epochs, lr 0.01 (teacher) / Adam 1e-3 (students), T=2, alpha=0.5 are kdcli's.
S003T = --dataset cifar10 --model cnn3-teacher --epochs 30 --optimizer sgd --lr 0.01 --momentum 0.9 \
        --weight-decay 5e-4 --scheduler cosine
S003S = --dataset cifar10 --model cnn3-student --epochs 30 --optimizer adam --lr 0.001
seed003-kl: install
	@set -e; \
	$(KD) train-teacher $(S003T) $(DATA) --name s003/teacher; \
	$(KD) cache-logits s003/teacher --dataset cifar10 $(DATA) --name s003/logits; \
	for s in $(SEEDS); do \
	  $(KD) baseline $(S003S) --loss mse-onehot --seed $$s $(DATA) --name s003/mse-s$$s; \
	  $(KD) distill $(S003S) --logits s003/logits --temperature 2 --alpha 0.5 --seed $$s $(DATA) --name s003/kd-s$$s; \
	done; \
	$(KD) compare 's003/mse-s*' 's003/kd-s*' --label mse-onehot --label kd --reference s003/teacher

# Seed 004, MNIST: TeacherNet (64/128/256) vs StudentNet (16/32), Adam 1e-3, batch 128, 10 epochs,
# T=3, alpha=0.5; soft targets only (alpha=0) vs hard targets only (baseline) vs both; and the
# temperature sweep T in 1,2,3,5,10 at 5 epochs each (its best T chosen on validation accuracy; the
# test accuracy of every T is reported).
S004 = --dataset mnist --epochs 10 --patience 0 --optimizer adam --lr 0.001 --batch-size 128
seed004-mnist: install
	@set -e; \
	$(KD) train-teacher $(S004) --model mnist-teacher $(DATA) --name s004/teacher; \
	$(KD) cache-logits s004/teacher --dataset mnist $(DATA) --name s004/logits; \
	for s in $(SEEDS); do \
	  $(KD) baseline $(S004) --model mnist-student --seed $$s $(DATA) --name s004/hard-s$$s; \
	  $(KD) distill $(S004) --model mnist-student --logits s004/logits --temperature 3 --alpha 0.5 --seed $$s $(DATA) \
	    --name s004/kd-s$$s; \
	  $(KD) distill $(S004) --model mnist-student --logits s004/logits --temperature 3 --alpha 0 --seed $$s $(DATA) \
	    --name s004/soft-s$$s; \
	done; \
	$(KD) compare 's004/hard-s*' 's004/kd-s*' 's004/soft-s*' --label hard --label kd --label soft --reference s004/teacher; \
	$(KD) sweep --stage distill --set dataset=mnist --set data_dir=$(DATA_DIR) --set model=mnist-student \
	  --set logits=s004/logits --set epochs=5 --set patience=0 --set batch_size=128 --set alpha=0.5 \
	  --grid temperature=1,2,3,5,10 --seeds 0-4 --plot-dir $(REPORTS)/seed004 --name s004/temperature-sweep

# Seed 001, regression (kdcli.recipes.seed001): teacher and expert teacher, scratch student, students
# distilled from each (hard 0.3 / hp 0.7), the grid hard 0.1..0.9, L_GR (0.2/0.5/0.3), L_FEAT and
# function matching (noise, mixup, fresh inputs uniform in the training rows' box; each of the four at
# hard 0.1 / hp 0.9 also patiently, 1200 epochs and patience 150) over SEEDS; seed
# epochs/lr/wd, early stopping on a validation split (patience 50). The report names the distilled
# student of lowest mean validation MSE and tests it against scratch and the expert teacher.
# Writes $(REPORTS)/seed001/report.md and report.csv. CPU, parallel workers; a rerun reads the cache.
# SEED001_PROTOCOL=seed runs seed 001's own protocol (no validation split, full epochs; slower).
SEED001_PROTOCOL ?= kdcli
seed001-regression: install
	$(BIN)/python -m kdcli.recipes.seed001 --seeds "$(SEEDS)" --protocol $(SEED001_PROTOCOL) --out $(REPORTS)/seed001

# The CIFAR-100 protocol of the published KD frameworks (RepDistiller, mdistiller), resnet32x4 ->
# resnet8x4, over BENCH_SEEDS: 240 epochs, SGD lr 0.05 momentum 0.9, batch 64, lr x0.1 at epochs
# 150/180/210, weight decay 5e-4, T=4, crop+flip, the whole 50k training set (no validation split,
# no early stopping; kept: the epoch of lowest training loss, in practice the last), the teacher
# online on the student's augmented view.
# vanilla = CE; kd = mdistiller's CE 0.1 + KL 0.9; dkd = CE 1, alpha 1, beta 8, warm-up 20 epochs;
# dkd+ls = the values logit-standardization-KD's train script resolves for DKD (alpha 9, beta 81, T 4).
# Published targets (../shared/ANCHORS.md): teacher 79.42, vanilla 72.50, KD 73.33, DKD 76.32; those
# tools report the best test epoch of unseeded runs, kdcli the last epoch per seed. TEACHER_R32X4 may
# name a pretrained checkpoint (e.g. mdistiller's cifar_teachers.tar resnet32x4_vanilla/ckpt_epoch_240.pth);
# without it the teacher is trained with the same protocol. Needs a GPU: every run is 240 epochs
# (BENCH_EPOCHS=1 BENCH_SEEDS=0 is a quick check of the recipe itself).
BENCH_SEEDS   ?= 0 1 2
BENCH_EPOCHS  ?= 240
TEACHER_R32X4 ?=
C100B = --dataset cifar100 --val-fraction 0 --epochs $(BENCH_EPOCHS) --patience 0 --optimizer sgd --lr 0.05 --momentum 0.9 \
        --weight-decay 5e-4 --batch-size 64 --scheduler multistep --milestones 150,180,210 --gamma 0.1 \
        --augment crop:4,flip --model resnet8x4
cifar100-kd-bench: install
	@if [ -z "$(DOWNLOAD)" ] && [ ! -d "$(DATA_DIR)/cifar-100-python" ]; then \
	  echo "cifar100-kd-bench: CIFAR-100 is missing ($(DATA_DIR)/cifar-100-python not found); rerun with" \
	       "DOWNLOAD=--download on a machine with network, or DATA_DIR=the folder holding cifar-100-python" >&2; \
	  exit 2; fi
	@set -e; mkdir -p $(REPORTS); \
	if [ -n "$(TEACHER_R32X4)" ]; then \
	  $(KD) import-teacher $(TEACHER_R32X4) --model resnet32x4 --dataset cifar100 --val-fraction 0 $(DATA) --name c100b/teacher; \
	else \
	  $(KD) train-teacher $(C100B) --model resnet32x4 --seed 0 $(DATA) --name c100b/teacher; \
	fi; \
	for s in $(BENCH_SEEDS); do \
	  $(KD) baseline $(C100B) --seed $$s $(DATA) --tag c100b-vanilla --name c100b/vanilla-s$$s; \
	  $(KD) distill $(C100B) --teacher c100b/teacher --method kd --alpha 0.1 --temperature 4 --seed $$s $(DATA) \
	    --tag c100b-kd --name c100b/kd-s$$s; \
	  $(KD) distill $(C100B) --teacher c100b/teacher --method dkd --ce-weight 1 --dkd-alpha 1 --dkd-beta 8 \
	    --dkd-warmup 20 --temperature 4 --seed $$s $(DATA) --tag c100b-dkd --name c100b/dkd-s$$s; \
	  $(KD) distill $(C100B) --teacher c100b/teacher --method dkd-ls --ce-weight 1 --dkd-alpha 9 \
	    --dkd-beta 81 --dkd-warmup 20 --temperature 4 --seed $$s $(DATA) --tag c100b-dkd-ls --name c100b/dkd-ls-s$$s; \
	done; \
	$(KD) compare tag:c100b-vanilla tag:c100b-kd tag:c100b-dkd tag:c100b-dkd-ls --label vanilla --label kd \
	  --label dkd --label dkd+ls --reference c100b/teacher --csv $(REPORTS)/cifar100-kd-bench.csv

# Every logit method (vanilla, kd, kd-ls, dkd, dkd-ls, deit) and function matching (kd / dkd with
# mixup or cutmix, teacher online) on digits over 5 seeds, on the demo's student and recipe, each
# paired against its same-augmentation baseline (Holm-adjusted); writes bench/methods_digits.md.
# CPU, cached per run.
methods-digits: install
	$(BIN)/python bench/methods_digits.py --seeds 0-4 --out bench/methods_digits.md

# Data-free distillation (seed 004 section 8.2, issue 25) on digits with the demo's teacher, student
# and KD recipe: DeepInversion inputs from the teacher alone (BN statistics + CE to balanced target
# classes + TV and L2 priors at Yin et al.'s weights; 500 steps per batch instead of the paper's 2000,
# for the time budget; jitter 1 pixel, no flips: digits are not mirror-symmetric), and as many Gaussian
# noise inputs. Per seed: the demo's real-data baseline and KD students, and a student distilled on each
# synthetic set (the teacher online; validation on held-out synthetic inputs, the test on digits' real
# test split). `kdcli compare --across-data` (the students trained on different inputs, all tested on
# digits' test split): every group against real-data KD (two-sided, Holm), then data-free KD against
# noise KD (one-sided); the tables also go to $(REPORTS)/data-free.txt, the image grid beside them.
DF_N     ?= 1536
DF_SYNTH ?= --n $(DF_N) --iterations 500 --jitter 1 --no-flip
DF_RUN    = -q --device $(DEVICE) >/dev/null
.PHONY: data-free
data-free: install
	@set -e; mkdir -p $(REPORTS); \
	echo "== teacher and its logit table"; $(DEMO_TEACHER); \
	echo "== synthesize $(DF_N) DeepInversion inputs (in the background) and $(DF_N) noise inputs"; \
	KDCLI_THREADS=1 $(KD) synthesize demo/teacher $(DF_SYNTH) --name data-free/deepinversion --device $(DEVICE) \
	  >/dev/null 2>$(REPORTS)/.data-free-synthesize.log & synth=$$!; \
	KDCLI_THREADS=1 $(KD) synthesize demo/teacher --method noise --n $(DF_N) --name data-free/noise $(DF_RUN); \
	di=; noise=; base=; kd=; \
	for s in $(SEEDS); do \
	  echo "== seed $$s: the demo's real-data baseline and distilled $(DEMO_STUDENT)"; \
	  KDCLI_THREADS=1 $(KD) baseline --model $(DEMO_STUDENT) $(DEMO_RECIPE) --seed $$s --name demo/baseline-s$$s $(DF_RUN) & pid=$$!; \
	  KDCLI_THREADS=1 $(KD) distill --logits demo/logits --model $(DEMO_STUDENT) $(DEMO_RECIPE) $(DEMO_KD) --seed $$s \
	    --name demo/kd-s$$s $(DF_RUN); wait $$pid; \
	  base=$${base:+$$base,}demo/baseline-s$$s; kd=$${kd:+$$kd,}demo/kd-s$$s; \
	done; \
	wait $$synth || { cat $(REPORTS)/.data-free-synthesize.log >&2; exit 1; }; grep -h "teacher gives" $(REPORTS)/.data-free-synthesize.log || true; \
	for s in $(SEEDS); do \
	  echo "== seed $$s: $(DEMO_STUDENT) distilled on the DeepInversion and on the noise inputs"; \
	  KDCLI_THREADS=1 $(KD) distill --dataset synthetic:data-free/deepinversion --teacher demo/teacher --model $(DEMO_STUDENT) \
	    $(DEMO_RECIPE) $(DEMO_KD) --seed $$s --name data-free/deepinversion-s$$s $(DF_RUN) & pid=$$!; \
	  KDCLI_THREADS=1 $(KD) distill --dataset synthetic:data-free/noise --teacher demo/teacher --model $(DEMO_STUDENT) \
	    $(DEMO_RECIPE) $(DEMO_KD) --seed $$s --name data-free/noise-s$$s $(DF_RUN); wait $$pid; \
	  di=$${di:+$$di,}data-free/deepinversion-s$$s; noise=$${noise:+$$noise,}data-free/noise-s$$s; \
	done; \
	$(KD) plot synthetic data-free/deepinversion --out $(REPORTS)/data-free-deepinversion.png -q >/dev/null; \
	{ $(KD) compare $$kd $$base $$noise $$di --label "real-data KD" --label "real-data baseline" --label "noise KD" \
	    --label "data-free KD" --alternative two-sided --across-data --reference demo/teacher && \
	  $(KD) compare $$noise $$di --label "noise KD" --label "data-free KD" --across-data; } >$(REPORTS)/data-free.txt 2>&1 \
	  || { cat $(REPORTS)/data-free.txt >&2; exit 1; }; cat $(REPORTS)/data-free.txt

# Quantization-aware distillation (seed 004 section 9.3, issue 25) on digits with the demo's teacher
# table, student and recipe, per seed: the demo's float KD student, as it exports (float ONNX) and
# quantized after training by onnxruntime, dynamic (`export --int8`) and static (`--int8-mode static`,
# calibrated on training inputs); QAT-KD: the student trained with int8 fake quantization and the KD
# loss on the fake-quantized outputs (`distill --quantize int8`, QAT_RECIPE), exported as its int8
# graph; and the QAT baseline, trained the same way on the labels alone. QAT_RECIPE (QAT from scratch
# with the demo's recipe) was chosen by `make qat-choice` on validation cross-entropy over other seeds.
# `kdcli compare` on the exports: test accuracy in onnxruntime, file size and CPU latency at batch 64
# (median of 20, one thread), paired tests against float KD + dynamic int8 (the issue's comparison),
# then QAT-KD against the QAT baseline. The tables also go to $(REPORTS)/qat.txt.
QAT_OUT    = $(REPORTS)/qat
QAT_LOG    = $(REPORTS)/.qat-export.log
QAT_RECIPE = $(DEMO_RECIPE) --quantize int8
QAT_FILE   = $$($(BIN)/python -c "import sys; from kdcli.store import Store, default_root; \
	print(Store(default_root()).get(sys.argv[1]).path)" $(1))
QAT_EXPORT = KDCLI_THREADS=1 $(KD) export $(1) --int8 $(2) --out $(QAT_OUT)/$(3) --name qat/$(3)-export -q >/dev/null \
	2>$(QAT_LOG) || { cat $(QAT_LOG) >&2; exit 1; }
.PHONY: qat qat-choice
qat: install
	@set -e; mkdir -p $(QAT_OUT); \
	echo "== teacher and its logit table"; $(DEMO_TEACHER); \
	kd=; static=; qkd=; qbase=; \
	for s in $(SEEDS); do \
	  echo "== seed $$s: the demo's float KD $(DEMO_STUDENT), then QAT-KD and the QAT baseline"; \
	  KDCLI_THREADS=1 $(KD) distill --logits demo/logits --model $(DEMO_STUDENT) $(QAT_RECIPE) $(DEMO_KD) --seed $$s \
	    --name qat/qat-kd-s$$s -q --device $(DEVICE) >/dev/null & pid=$$!; \
	  KDCLI_THREADS=1 $(KD) distill --logits demo/logits --model $(DEMO_STUDENT) $(DEMO_RECIPE) $(DEMO_KD) --seed $$s \
	    --name demo/kd-s$$s -q --device $(DEVICE) >/dev/null; \
	  KDCLI_THREADS=1 $(KD) baseline --model $(DEMO_STUDENT) $(QAT_RECIPE) --seed $$s --name qat/qat-baseline-s$$s \
	    -q --device $(DEVICE) >/dev/null; wait $$pid; \
	done; \
	echo "== exports (one at a time, nothing else running: their latencies are measured)"; \
	for s in $(SEEDS); do \
	  $(call QAT_EXPORT,demo/kd-s$$s,--max-drop 100,kd-s$$s); \
	  $(call QAT_EXPORT,demo/kd-s$$s,--int8-mode static --max-drop 100,kd-static-s$$s); \
	  $(call QAT_EXPORT,qat/qat-kd-s$$s,,qat-kd-s$$s); $(call QAT_EXPORT,qat/qat-baseline-s$$s,,qat-baseline-s$$s); \
	  kd=$${kd:+$$kd,}qat/kd-s$$s-export; static=$${static:+$$static,}qat/kd-static-s$$s-export; \
	  qkd=$${qkd:+$$qkd,}qat/qat-kd-s$$s-export; qbase=$${qbase:+$$qbase,}qat/qat-baseline-s$$s-export; \
	done; \
	{ $(KD) compare int8:$$kd $$kd int8:$$static $$qkd $$qbase --label "float KD + PTQ int8 dynamic" --label "float KD" \
	    --label "float KD + PTQ int8 static" --label "QAT-KD int8" --label "QAT baseline int8" --reference demo/teacher && \
	  $(KD) compare $$qbase $$qkd --label "QAT baseline int8" --label "QAT-KD int8"; } >$(REPORTS)/qat.txt 2>&1 \
	  || { cat $(REPORTS)/qat.txt >&2; exit 1; }; cat $(REPORTS)/qat.txt

# How QAT_RECIPE was chosen, on validation only: on seeds QAT_CHOICE_SEEDS (never reported), the demo's
# float KD student, then three QAT-KD candidates: fine-tuning it 50 epochs at lr 3e-4 (ft50), 100 epochs
# at lr 1e-3 (ft100), and QAT from scratch with the demo's recipe (scratch); `kdcli compare` prints each
# one's validation cross-entropy (val_nll) per seed and its paired tests; the lowest mean wins.
QAT_CHOICE_SEEDS ?= 100 101 102
qat-choice: install
	@set -e; echo "== teacher and its logit table"; $(DEMO_TEACHER); \
	for s in $(QAT_CHOICE_SEEDS); do \
	  echo "== seed $$s: float KD, QAT-KD from scratch, then the fine-tuning candidates"; \
	  KDCLI_THREADS=1 $(KD) distill --logits demo/logits --model $(DEMO_STUDENT) $(DEMO_RECIPE) $(DEMO_KD) --seed $$s \
	    --name demo/kd-s$$s -q --device $(DEVICE) >/dev/null & pid=$$!; \
	  KDCLI_THREADS=1 $(KD) distill --logits demo/logits --model $(DEMO_STUDENT) $(DEMO_RECIPE) $(DEMO_KD) --quantize int8 \
	    --seed $$s --name qat-choice/scratch-s$$s -q --device $(DEVICE) >/dev/null; wait $$pid; \
	  KDCLI_THREADS=1 $(KD) distill --logits demo/logits --model $(DEMO_STUDENT) --epochs 50 --patience 0 --lr 3e-4 \
	    --quantize int8 $(DEMO_KD) --weights $(call QAT_FILE,demo/kd-s$$s) --seed $$s --name qat-choice/ft50-s$$s \
	    -q --device $(DEVICE) >/dev/null & pid=$$!; \
	  KDCLI_THREADS=1 $(KD) distill --logits demo/logits --model $(DEMO_STUDENT) --epochs 100 --patience 0 --lr 1e-3 \
	    --quantize int8 $(DEMO_KD) --weights $(call QAT_FILE,demo/kd-s$$s) --seed $$s --name qat-choice/ft100-s$$s \
	    -q --device $(DEVICE) >/dev/null; wait $$pid; \
	done; \
	$(KD) compare 'qat-choice/ft50-s*' 'qat-choice/ft100-s*' 'qat-choice/scratch-s*' --label ft50 --label ft100 \
	  --label scratch --metric val_nll --alternative two-sided

# Which teacher table for a language model (issue 23): on python-docs (bpe:512, context 64), one
# lm-teacher and lm-student, seeds 0-4, paired by seed: baseline, KD from the full table, top-k 1/8/32
# with and without the tail, sampled 8/32, online forward KL / reverse KL / JSD, sequence-level KD;
# each row minus full-table KD (Holm-adjusted). Two processes on one torch thread each share the seeds
# (the second waits for the teacher and tables the first makes), then a third, all cached, writes
# $(REPORTS)/lm-tables.md and lm-tables.png (bits per byte against bytes per position). CPU.
.PHONY: lm-tables
lm-tables: install
	@set -e; mkdir -p $(REPORTS); \
	KDCLI_THREADS=1 $(BIN)/python bench/lm_tables.py --seeds 0-2 --device $(DEVICE) --out $(REPORTS)/lm-tables-0-2.md \
	  --plot $(REPORTS)/lm-tables-0-2.png >/dev/null & pid=$$!; \
	KDCLI_THREADS=1 $(BIN)/python bench/lm_tables.py --seeds 3-4 --device $(DEVICE) --out $(REPORTS)/lm-tables-3-4.md \
	  --plot $(REPORTS)/lm-tables-3-4.png >/dev/null; wait $$pid; \
	$(BIN)/python bench/lm_tables.py --seeds 0-4 --device $(DEVICE) --out $(REPORTS)/lm-tables.md \
	  --plot $(REPORTS)/lm-tables.png
