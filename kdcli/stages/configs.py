"""Config dataclasses of the training stages; every default is commented through its help text.

Defaults fit the embedded digits demo; the Makefile's seed targets pass the seeds' values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdcli.config import check_seed, opt, parse_kv
from kdcli.errors import UsageError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("constant", "cosine", "onecycle", "step", "multistep")
MONITORS = ("val_loss", "val_acc", "val_kl")
PRECISIONS = ("fp32", "bf16", "fp16")
EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "hf": ""}  # export format -> file suffix (hf: a directory)
ZOO_PREFIXES = ("timm:", "torchvision:")  # import-teacher sources built by kdcli.models.zoo
INT8_MODES = ("dynamic", "static")  # export --int8-mode: onnxruntime's post-training quantizations
QUANTIZE = ("none", "int8")  # --quantize: float training, or int8 fake quantization (kdcli.models.quantize)
# synthesize --method -> the weights it reads, with their defaults: DeepInversion's are Yin et al. 2020's
# CIFAR-10 settings as NVlabs/DeepInversion's cifar10 README runs them (BN 10, Adam lr 0.05, TV 2.5e-5,
# 2000 steps, batches of 256, CE 1: checked against that script); L2 3e-8 is the paper's figure as we
# recall it (the script's default is 0; at 3e-8 the term is ~1e-6 of the loss); ADI's competition
# weight 0.2 is the one its README says the paper used; entropy-tv's are seed 004's (entropy 1, TV
# 1e-4); noise optimizes nothing
SYNTHESIS_METHODS = {
    "deepinversion": {"ce_weight": 1.0, "bn_weight": 10.0, "tv_weight": 2.5e-5, "l2_weight": 3e-8},
    "adi": {"ce_weight": 1.0, "bn_weight": 10.0, "tv_weight": 2.5e-5, "l2_weight": 3e-8, "adi_weight": 0.2},
    "entropy-tv": {"entropy_weight": 1.0, "tv_weight": 1e-4},
    "noise": {},
}
SYNTHESIS_WEIGHTS = ("ce_weight", "bn_weight", "tv_weight", "l2_weight", "adi_weight", "entropy_weight")


TASKS = ("regression", "classification")
TEXT_DATASETS = ("text", "python-docs", "seqkd")  # the corpora: their models are language models
# data options that only some data sets take (by the name before ':'); elsewhere they are refused
DATA_OPTIONS = {"n_samples": ("synthetic-regression",), "n_features": ("synthetic-regression",),
                "noise": ("synthetic-regression",), "target": ("csv",), "task": ("csv", "npz"),
                "image_size": ("imagefolder",), "context": TEXT_DATASETS, "tokenizer": TEXT_DATASETS,
                "normalize": ("npz",)}
NORMALIZE = ("per-feature", "none")


def check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {value!r}")


@dataclass
class DataConfig:
    dataset: str = opt("digits", "data set: digits, mnist, fashion-mnist, cifar10, cifar100, imagefolder:PATH, "
                                 "synthetic-regression, diabetes, csv:PATH, npz:PATH, python-docs, text:PATH, "
                                 "synthetic:REF (kdcli synthesize), seqkd:REF (a sequence-kd artifact; see "
                                 "'kdcli datasets')")
    data_dir: str = opt("data", "directory holding downloaded data sets", key=False)
    download: bool = opt(False, "download the data set if missing (needs network)", key=False)
    split_seed: int = opt(0, "seed of the train/validation split of the training pool")
    val_fraction: float = opt(0.1, "fraction of the training pool held out for validation (model selection)")
    n_samples: int | None = opt(None, "synthetic-regression: number of samples (default 2000)")
    n_features: int | None = opt(None, "synthetic-regression: number of features (default 10)")
    noise: float | None = opt(None, "synthetic-regression: Gaussian noise std (default 0.1)")
    target: str | None = opt(None, "csv:PATH: name of the target column")
    image_size: int | None = opt(None, "imagefolder:PATH: resize images to this square size (default 32)")
    task: str | None = opt(None, "csv:PATH: regression (default) or classification (an integer target column "
                                 "holds class labels); npz:PATH: the default follows y (integers classify)")
    normalize: str | None = opt(None, "npz:PATH: per-feature (default: mean and std of each feature, dim 1, "
                                      "from the training split) or none")
    context: int | None = opt(None, "text:PATH, python-docs: tokens per training window (default 128)")
    tokenizer: str | None = opt(None, "text:PATH, python-docs: bytes (default, 256 symbols), bpe:N (a byte-level "
                                      "BPE of N tokens trained on the training split, stored) or a local "
                                      "Hugging Face tokenizer directory")

    def validate(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise UsageError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        check_seed("--split-seed", self.split_seed)
        base = self.dataset.partition(":")[0]
        for name, datasets in DATA_OPTIONS.items():
            if getattr(self, name) is not None and base not in datasets:
                names = " and ".join([", ".join(datasets[:-1]), datasets[-1]]) if len(datasets) > 1 else datasets[0]
                raise UsageError(f"--{name.replace('_', '-')} applies to {names} only, not to "
                                 f"--dataset {self.dataset}")
        if self.task is not None:
            check_choice("task", self.task, TASKS)
        if self.normalize is not None:
            check_choice("normalize", self.normalize, NORMALIZE)
        if self.context is not None and self.context < 1:
            raise UsageError(f"--context must be >= 1, got {self.context}")
        if self.is_text and (self.split_seed != 0 or self.val_fraction != 0.1):
            raise UsageError("--split-seed and --val-fraction do not apply to a text corpus: its train, validation "
                             "and test split is fixed by its files and blocks, never by a seed")

    @property
    def is_text(self) -> bool:
        return self.dataset.partition(":")[0] in TEXT_DATASETS


@dataclass
class TrainConfig(DataConfig):
    model: str = opt("digits-student", "registry model name (see 'kdcli models')")
    model_args: list[str] = opt([], "model argument key=value (repeatable)", flag="--model-arg")
    weights: str | None = opt(None, "initialize the model from this .safetensors or torch state-dict file "
                                    "(a head of another class count stays fresh)", key=False)
    epochs: int = opt(100, "maximum number of epochs")
    batch_size: int = opt(64, "training batch size")
    optimizer: str = opt("adam", "adam, adamw or sgd")
    lr: float = opt(3e-3, "learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(0.0, "weight decay")
    scheduler: str = opt("constant", "learning-rate schedule: constant, cosine, onecycle (peak --lr, per batch), "
                                     "step or multistep")
    warmup_epochs: int = opt(0, "cosine / onecycle: epochs of linear (onecycle: cosine) warm-up to --lr, "
                                "stepped per batch (onecycle default: 30% of the run)")
    step_size: int = opt(30, "step schedule: epochs between decays")
    gamma: float = opt(0.1, "step/multistep schedule: decay factor")
    milestones: list[int] = opt([], "multistep schedule: epochs at which to decay (comma separated)")
    patience: int = opt(10, "early stopping: epochs without improvement of --monitor (0 = off)")
    monitor: str = opt("val_loss", "validation metric that early stopping watches and the kept epoch is best "
                                   "by: val_loss (the objective's), val_acc, or val_kl (the KD term)")
    augment: str = opt("auto", "augmentation: auto (the data set's default), none, or e.g. crop:4,flip")
    seed: int = opt(0, "seed of weights initialization, batch order and augmentation draws")
    precision: str = opt("fp32", "fp32, or bf16/fp16 autocast on CUDA")
    quantize: str = opt("none", "none, or int8: quantization-aware training, the model fake-quantized (int8 "
                                "weights and activations) in every forward pass and its loss on those outputs")
    compile: bool = opt(False, "torch.compile the model (CUDA)", key=False)
    checkpoint_every: float = opt(30.0, "seconds between resumable checkpoints (also written after the first "
                                        "and the last epoch and on Ctrl-C / SIGTERM; 0 = every epoch)", key=False)
    eval_batch_size: int = opt(512, "batch size for validation, test and logit caching", key=False)

    def validate(self) -> None:
        super().validate()
        check_seed("--seed", self.seed)
        for name, value, low in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 1),
                                 ("patience", self.patience, 0), ("eval_batch_size", self.eval_batch_size, 1)):
            if value < low:
                raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        if self.lr <= 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if not self.checkpoint_every >= 0:
            raise UsageError(f"--checkpoint-every must be >= 0 seconds, got {self.checkpoint_every}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_choice("monitor", self.monitor, MONITORS)
        if self.warmup_epochs < 0:
            raise UsageError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if self.warmup_epochs and self.scheduler not in ("cosine", "onecycle"):
            raise UsageError(f"--warmup-epochs works with --scheduler cosine or onecycle, not {self.scheduler}")
        if self.warmup_epochs > self.epochs:
            raise UsageError(f"--warmup-epochs {self.warmup_epochs} exceeds --epochs {self.epochs}")
        check_choice("precision", self.precision, PRECISIONS)
        if self.is_text and self.augment not in ("auto", "none"):
            raise UsageError(f"--augment {self.augment}: views and mixing are for images and tables; a text "
                             "corpus trains on its windows as they are (drop --augment)")
        check_choice("quantize", self.quantize, QUANTIZE)
        if self.quantize != "none" and self.compile:
            raise UsageError("--quantize int8 trains an FX graph that --compile does not take; drop --compile")


@dataclass
class TeacherConfig(TrainConfig):
    model: str = opt("digits-teacher", "registry model name (see 'kdcli models')")


@dataclass
class BaselineConfig(TrainConfig):
    loss: str = opt("ce", "hard-label loss: ce or mse-onehot (seed 003)")


@dataclass
class DistillConfig(TrainConfig):
    """The distill stage. Weights default to None: the chosen method's defaults fill the ones it reads
    (kdcli.losses.methods, `kdcli methods`), and a weight it does not read is refused."""

    teacher: str | None = opt(None, "teacher model artifact, run online (needed by feature methods)", key=False)
    logits: str | None = opt(None, "cached teacher-logits artifact (from cache-logits)", key=False)
    method: str | None = opt(None, "distillation method (see 'kdcli methods'), or your loss class "
                                   "py:FILE.py:NAME / py:package.module:NAME; default kd, or regression on "
                                   "regression data")
    method_args: list[str] = opt([], "py: method: a parameter of your loss, KEY=VALUE (repeatable)",
                                 flag="--method-arg")
    # the methods' weights (kdcli.losses.methods): defaults are the papers' settings, per method
    alpha: float | None = opt(None, "kd, kd-ls, deit: weight of the hard-label CE, the KD weight is 1 - alpha "
                                    "(default 0.5); 0 = labels unused (seed 002)")
    temperature: float | None = opt(None, "kd, kd-ls, dkd, dkd-ls: softmax temperature T (default 4)")
    ce_weight: float | None = opt(None, "dkd, dkd-ls, feature methods: weight of the hard-label CE (default 1)")
    dkd_alpha: float | None = opt(None, "dkd: weight of the target-class term TCKD (Zhao et al. 2022; default 1)")
    dkd_beta: float | None = opt(None, "dkd: weight of the non-target-class term NCKD (default 8)")
    dkd_warmup: int | None = opt(None, "dkd: epochs of linear warm-up of the DKD terms (default 20; 0 = none)")
    jsd_beta: float | None = opt(None, "jsd: beta of the generalized JSD, the mixture m = beta p + (1 - beta) q "
                                       "(GKD, Agarwal et al. 2024; default 0.5, in (0, 1))")
    # schedules over the epochs (kdcli.stages.objectives.logit.Schedule)
    temperature_schedule: str = opt("constant", "temperature schedule: constant, linear or cosine "
                                                "from --temperature to --temperature-end")
    temperature_end: float | None = opt(None, "temperature at the last epoch of a linear/cosine schedule")
    alpha_schedule: str = opt("constant", "alpha schedule: constant, linear or cosine from --alpha to --alpha-end")
    alpha_end: float | None = opt(None, "alpha at the last epoch of a linear/cosine schedule")
    # regression data (seed 001): L = w_hard*MSE(y, y_s) + w_hp*MSE(y_t, y_s) + w_feat*MSE(P(h_s), h_t)
    #   + w_gr*MSE(grad_x L_s, grad_x L_t); --augment noise:SIGMA / mixup:ALPHA adds teacher-labelled inputs
    w_hard: float | None = opt(None, "regression: weight of the label term MSE(y, y_s) (seed 001: 0.3)")
    w_hp: float | None = opt(None, "regression: weight of the prediction term MSE(y_t, y_s) (seed 001: 0.7)")
    w_feat: float | None = opt(None, "regression: weight of the feature term MSE(P(h_s), h_t), P learned (default 0)")
    w_gr: float | None = opt(None, "regression: weight of the input-gradient term (default 0; seed 001 part 4: 0.3)")
    # layer pairs of feature terms, shared by regression's w_feat and the classification feature methods
    feature_pairs: list[str] = opt([], "feature pair teacher.LAYER:student.LAYER (repeatable; the role prefixes "
                                       "are optional), e.g. teacher.hidden.2:student.hidden.1; default: the "
                                       "method's own choice (at, sp: the last convolutional feature maps; others: "
                                       "penultimate; MLPs: the last hidden layers)", flag="--feature-pair")
    # feature methods (kdcli.losses.feature_methods; layers from --feature-pair)
    feature_weight: float | None = opt(None, "feature methods: weight of the method's term (default: the method's "
                                             "own, fitnet 100, at 1000, sp 3000, rkd 1, crd 0.8)")
    crd_dim: int | None = opt(None, "crd: embedding width (default 128)")
    crd_negatives: int | None = opt(None, "crd: negatives per anchor drawn from the memory bank, capped at N - 1 "
                                          "(default 16384)")
    # training schemes (kdcli.stages.planners)
    extra_teachers: list[str] = opt([], "another teacher, a model or logits artifact, whose logits are averaged "
                                        "with the first (repeatable)", flag="--extra-teacher", key=False)
    scheme: str = opt("standard", "standard (teacher -> student), dml (two students teach each other, no "
                                  "teacher) or ema (an exponential moving average of the student teaches it)")
    ema_decay: float = opt(0.999, "ema scheme: decay of the moving average per training step")
    generations: int = opt(1, "born-again generations: each after the first learns from the one before")

    def validate(self) -> None:
        super().validate()
        if self.method_args and not (self.method or "").startswith("py:"):
            raise UsageError("--method-arg sets a parameter of your own loss (--method py:FILE.py:NAME); the "
                             "built-in methods take their weights as flags (see 'kdcli methods')")
        parse_kv(self.method_args, "--method-arg")
        if self.temperature is not None and self.temperature <= 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise UsageError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.jsd_beta is not None and not 0 < self.jsd_beta < 1:
            raise UsageError(f"--jsd-beta must be in (0, 1), got {self.jsd_beta}")
        for name in ("ce_weight", "dkd_alpha", "dkd_beta", "dkd_warmup", "w_hard", "w_hp", "w_feat", "w_gr",
                     "feature_weight"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.compile and self.w_gr:  # the input-gradient term differentiates through the model twice
            raise UsageError("--w-gr needs a double backward, which torch.compile does not support; drop --compile")
        for name, end in (("temperature", self.temperature_end), ("alpha", self.alpha_end)):
            kind = getattr(self, f"{name}_schedule")
            check_choice(f"{name}_schedule", kind, ("constant", "linear", "cosine"))
            if kind != "constant" and end is None:
                raise UsageError(f"--{name}-schedule {kind} needs --{name}-end")
        if self.temperature_end is not None and self.temperature_end <= 0:
            raise UsageError(f"--temperature-end must be > 0, got {self.temperature_end}")
        if self.alpha_end is not None and not 0 <= self.alpha_end <= 1:
            raise UsageError(f"--alpha-end must be in [0, 1], got {self.alpha_end}")
        if (self.crd_dim is not None and self.crd_dim < 1) or (self.crd_negatives is not None and self.crd_negatives < 1):
            raise UsageError("--crd-dim and --crd-negatives must be >= 1")
        check_choice("scheme", self.scheme, ("standard", "dml", "ema"))
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.generations < 1:
            raise UsageError(f"--generations must be >= 1, got {self.generations}")
        if self.teacher and self.logits:
            raise UsageError("give the teacher once: --teacher MODEL_REF (run online) or --logits LOGITS_REF "
                             "(its cached table), not both")
        if not self.teacher and not self.logits and self.scheme == "standard":
            raise UsageError("distill needs a teacher: --teacher MODEL_REF or --logits LOGITS_REF "
                             "(or --scheme dml / ema)")


@dataclass
class InferenceConfig(DataConfig):
    """A stage that only runs a model forward: batch size and precision of those passes."""

    eval_batch_size: int = opt(512, "batch size for the model's forward passes", key=False)
    precision: str = opt("fp32", "fp32, or bf16/fp16 autocast on CUDA")

    def validate(self) -> None:
        super().validate()
        check_choice("precision", self.precision, PRECISIONS)


@dataclass
class CacheLogitsConfig(InferenceConfig):
    teacher: str = opt("", "teacher model artifact", key=False)
    views: str = opt("none", "discrete augmented views to cache, e.g. flip,translate:2 (none = clean images)")
    topk: int = opt(0, "keep only the top-k probabilities per view, the rest spread evenly (0 = full logits)")
    dtype: str = opt("float16", "storage dtype: float16 or float32")
    table: str | None = opt(None, "text: what to keep per position: topk:K (default topk:32, the K largest "
                                  "log-probs, their ids and the tail mass; = topk:K,tail), topk:K,notail (the K "
                                  "renormalized), sample:N or sample:N,T (N draws from the teacher at temperature "
                                  "T, default 1, with counts, for the unbiased importance-weighted estimate) or "
                                  "full (small vocabularies)")

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise UsageError("cache-logits needs --teacher MODEL_REF")
        check_choice("dtype", self.dtype, ("float16", "float32"))
        if self.topk < 0:
            raise UsageError(f"--topk must be >= 0, got {self.topk}")
        if self.is_text and (self.topk or self.views != "none"):
            raise UsageError("--topk and --views are for images; a text table takes --table topk:K or full")
        if self.table is not None and not self.is_text:
            raise UsageError("--table is for text corpora; an image table takes --topk K and --views")


@dataclass
class SequenceKDConfig(InferenceConfig):
    teacher: str = opt("", "language-model teacher artifact whose samples become the training windows", key=False)
    temperature: float = opt(1.0, "sampling temperature of the teacher's next-token distribution")
    prompt_tokens: int = opt(4, "each training window's first tokens, from the corpus, that a sample continues")
    length: int | None = opt(None, "tokens sampled per continuation (default: context + 1 - prompt tokens, so "
                                   "each sample fills one window)")
    seed: int = opt(0, "seed of the draws")

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise UsageError("sequence-kd needs a text teacher: kdcli sequence-kd TEACHER --dataset CORPUS")
        if not self.is_text or self.dataset.startswith("seqkd:"):
            raise UsageError(f"sequence-kd samples a language-model teacher on its corpus (--dataset python-docs "
                             f"or text:PATH), not --dataset {self.dataset}")
        if not self.temperature > 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        if self.prompt_tokens < 1:
            raise UsageError(f"--prompt-tokens must be >= 1, got {self.prompt_tokens}")
        if self.length is not None and self.length < 1:
            raise UsageError(f"--length must be >= 1, got {self.length}")


@dataclass
class ImportConfig(InferenceConfig):
    source: str = opt("", "hf:ID_OR_DIR, torchhub:OWNER/REPO:ENTRY, timm:NAME, torchvision:NAME, or a checkpoint "
                          "file (.pt, .pth, .safetensors)",
                      key=False)
    model: str | None = opt(None, "registry model to load torch.hub or checkpoint weights into (e.g. resnet56)")
    model_args: list[str] = opt([], "model argument key=value (repeatable)", flag="--model-arg")
    weights: str | None = opt(None, "timm:NAME / torchvision:NAME sources: their weights, a .safetensors or "
                                    "torch state-dict file (or --model-arg pretrained=true online)", key=False)
    hf_image_size: int | None = opt(None, "hf: resize inputs to this size (default: what the model's config says)")
    trust_remote_code: bool = opt(False, "allow torch.hub code and Hugging Face remote code to run", key=False)

    def validate(self) -> None:
        super().validate()
        if not self.source:
            raise UsageError("import-teacher needs a SOURCE: hf:ID_OR_DIR, torchhub:OWNER/REPO:ENTRY or a file")
        if self.source.startswith(ZOO_PREFIXES):
            if not self.weights and parse_kv(self.model_args).get("pretrained") is not True:
                raise UsageError(f"import-teacher {self.source} needs its weights: --weights PATH "
                                 "(or --model-arg pretrained=true to fetch the library's own, online)")
        elif not self.source.startswith("hf:") and not self.model:
            raise UsageError("--model names the registry model that receives torch.hub or checkpoint weights")


@dataclass
class SynthesizeConfig:
    """The synthesize stage: synthetic inputs inverted from a teacher (data-free distillation). Weights
    default to None: the method's defaults (SYNTHESIS_METHODS) fill the ones it reads."""

    teacher: str = opt("", "teacher model artifact to invert", key=False)
    method: str = opt("deepinversion", "deepinversion (BN statistics, CE to sampled classes, TV and L2 priors; "
                                       "Yin et al. 2020), adi (adds the competition with --student), entropy-tv "
                                       "(seed 004's entropy + TV objective) or noise (Gaussian inputs, no optimization)")
    student: str | None = opt(None, "adi: the student model artifact whose disagreement with the teacher is sought",
                              key=False)
    n: int = opt(1536, "number of synthetic inputs")
    batch_size: int = opt(256, "inputs optimized together (the BN statistics are a batch's)")
    iterations: int = opt(2000, "optimizer steps per batch")
    lr: float = opt(0.05, "Adam learning rate on the inputs")
    seed: int = opt(0, "seed of the initial noise, the target classes, jitter and flips")
    balance: str = opt("balanced", "target classes: balanced (equal counts, shuffled) or random (uniform draws)")
    jitter: int = opt(2, "random shift of up to this many pixels per step (rolled), as DeepInversion does; 0 = none")
    flip: bool = opt(True, "random horizontal flip per step (turn off for digits and text)")
    ce_weight: float | None = opt(None, "deepinversion, adi: weight of the CE to the target classes (default 1)")
    bn_weight: float | None = opt(None, "deepinversion, adi: weight of the BN-statistics term (default 10)")
    tv_weight: float | None = opt(None, "weight of the total-variation prior (deepinversion, adi: L2, default "
                                        "2.5e-5; entropy-tv: L1, default 1e-4)")
    l2_weight: float | None = opt(None, "deepinversion, adi: weight of the L2 prior (default 3e-8)")
    adi_weight: float | None = opt(None, "adi: weight of the competition term 1 - JS (default 0.2)")
    entropy_weight: float | None = opt(None, "entropy-tv: weight of the teacher's entropy (default 1)")
    eval_batch_size: int = opt(512, "batch size of the teacher's final pass over the inputs", key=False)

    def validate(self) -> None:
        if not self.teacher:
            raise UsageError("synthesize needs a TEACHER model artifact")
        check_choice("method", self.method, SYNTHESIS_METHODS)
        check_choice("balance", self.balance, ("balanced", "random"))
        for name, low in (("n", 1), ("batch_size", 1), ("iterations", 1), ("jitter", 0), ("eval_batch_size", 1)):
            if getattr(self, name) < low:
                raise UsageError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        reads = SYNTHESIS_METHODS[self.method]
        for name in SYNTHESIS_WEIGHTS:
            value = getattr(self, name)
            if value is not None and name not in reads:
                raise UsageError(f"--{name.replace('_', '-')} is not a weight of --method {self.method} (it reads "
                                 f"{', '.join('--' + w.replace('_', '-') for w in reads) or 'none'}); drop it")
            if value is not None and not value >= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if (self.method == "adi") != bool(self.student):
            raise UsageError("--method adi needs --student MODEL_REF" if self.method == "adi"
                             else f"--student is read by --method adi only, not {self.method}")

    def weights(self) -> dict[str, float]:
        """The weights the method reads: the given values, else the method's defaults."""
        return {name: default if getattr(self, name) is None else getattr(self, name)
                for name, default in SYNTHESIS_METHODS[self.method].items()}


@dataclass
class ExportConfig:
    model: str = opt("", "model artifact to export (name, id or id prefix)", key=False)
    teacher: str | None = opt(None, "also export and measure this teacher model artifact", key=False)
    format: str = opt("onnx", "onnx or torchscript; hf (a Hugging Face directory) for language models")
    out: str = opt("", "directory the exported files are written to", key=False)
    atol: float = opt(1e-3, "parity: largest allowed max |logit difference| between the export and PyTorch "
                            "(--format hf: of test bits per byte, through transformers and in the manifest)")
    min_agreement: float = opt(99.9, "parity: smallest allowed argmax agreement with PyTorch, % of test images")
    int8: bool = opt(False, "onnx: also quantize to int8 after training (see --int8-mode)")
    int8_mode: str = opt("dynamic", "int8: dynamic (int8 weights, activations quantized per batch at run time: "
                                    "onnxruntime quantize_dynamic) or static (int8 weights and activations at "
                                    "ranges calibrated on training inputs, min-max, QDQ: onnxruntime "
                                    "quantize_static; the format a --quantize int8 model exports to)")
    calibration_samples: int = opt(512, "int8 static: training-split inputs the activation ranges are "
                                        "calibrated on (never validation or test)")
    max_drop: float = opt(1.0, "int8: refuse it if test accuracy falls by more than this many points "
                                    "(a negative value demands a gain)")
    opset: int = opt(17, "onnx: opset version")
    latency_repeats: int = opt(20, "timed runs per latency figure (their median)", key=False)
    eval_batch_size: int = opt(512, "batch size of the parity and accuracy passes", key=False)

    def validate(self) -> None:
        if not self.model:
            raise UsageError("export needs a MODEL artifact")
        if not self.out:
            raise UsageError("export needs --out DIR")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise UsageError(f"--out {self.out} is a file; give a directory")
        check_choice("format", self.format, EXPORT_FORMATS)
        if self.int8 and self.format != "onnx":
            raise UsageError("--int8 quantizes ONNX models; use --format onnx")
        check_choice("int8_mode", self.int8_mode, INT8_MODES)
        if self.int8_mode != "dynamic" and not self.int8:
            raise UsageError(f"--int8-mode {self.int8_mode} is a mode of --int8; add --int8")
        if self.calibration_samples < 1:
            raise UsageError(f"--calibration-samples must be >= 1, got {self.calibration_samples}")
        if self.atol < 0 or not 0 <= self.min_agreement <= 100:
            raise UsageError("--atol must be >= 0 and --min-agreement in [0, 100]")
        if self.latency_repeats < 1 or self.eval_batch_size < 1:
            raise UsageError("--latency-repeats and --eval-batch-size must be >= 1")
