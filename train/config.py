"""The options of ``vithub train``, written once: :class:`TrainConfig`'s fields carry their type, default and help,
and :func:`add_config_arguments` makes the command-line flags from them. An option is added by adding a field."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Dict, Iterable, List, Optional, Sequence

DEFAULT_MODEL = "vh_efficientvit_m0"
DEFAULT_TASK = "classification"


def option(default: Any, help: str = "", flags: Sequence[str] = (), choices: Optional[Sequence[Any]] = None,
           cli: bool = True, default_factory: Any = MISSING) -> Any:
    """A :class:`TrainConfig` field with its command-line help. ``flags``: extra spellings besides ``--field-name``
    (aliases, short flags); ``choices``: allowed values; ``cli=False``: settable from Python only."""
    metadata = {"help": help, "flags": tuple(flags), "choices": choices, "cli": cli}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Options of ``vithub train``, named as in timm's ``train.py`` where it has them."""

    task: str = option(DEFAULT_TASK, "what to train: a task registered in vithub.train.tasks")
    recipe: Optional[str] = option(None, "an official ImageNet recipe preset (vithub recipes lists them); options "
                                   "given explicitly override its values")
    recipe_applied: Optional[str] = option(None, "the recipe whose values this config holds", cli=False)
    model: Optional[str] = option(None, "any timm model name (ours: vh_*)")
    pretrained: bool = option(False, "start from the model's pretrained weights")
    pretrained_path: Optional[str] = option(
        None, "start from these weights (.safetensors or a weights-only torch file, the model's own or its official "
        "layout) read as its pretrained weights are: position tables resized to this model's input and window, the "
        "classifier kept when its classes match the data's, else started fresh (timm's --pretrained-path; the "
        "fine-tuning recipes start this way)")
    pretrained_head_rows: Optional[str] = option(
        None, "with --pretrained-path: a text file of the checkpoint's classifier rows for the data's classes, one "
        "index per line (Swin's map22kto1k.txt for 22k weights fine-tuned on 1k classes)")
    initial_checkpoint: Optional[str] = option(
        None, "start from these weights (.safetensors or a weights-only torch file)")
    data: Optional[str] = option(
        None, "folder with train/ and val/ class sub-folders, or a timm dataset spec (torch/cifar10, hfds/<name>) "
        "read from --data-dir; default: the embedded handwritten digits (scikit-learn)", flags=("--dataset",))
    data_dir: Optional[str] = option(None, "where a dataset spec's files are")
    train_split: str = option("train", "split of a dataset spec to train on")
    val_split: str = option("validation", "split of a dataset spec to validate on")
    dataset_download: bool = option(False, "let torchvision download a torch/ spec")
    train_num_samples: Optional[int] = option(None, "records in a streamed (hfids/) training split, when the dataset "
                                              "does not say")
    val_num_samples: Optional[int] = option(None, "records in a streamed (hfids/) validation split, when the dataset "
                                            "does not say")
    input_key: str = option("image", "a streamed (hfids/) dataset's image column")
    target_key: str = option("label", "a streamed (hfids/) dataset's class-label column")
    stream_shuffle_size: int = option(4096, "records in a streamed (hfids/) training split's shuffle buffer")
    max_unreadable: float = option(
        0.01, "largest fraction of a split's images that may be unreadable (skipped and counted) before the run stops")
    output: str = option("output/train", "run folder: checkpoints, metrics, summary.json")
    epochs: Optional[int] = option(None)
    batch_size: Optional[int] = option(None, flags=("-b",))
    opt: str = option("adamw", "timm optimizer name")
    lr: Optional[float] = option(None)
    weight_decay: Optional[float] = option(None)
    sched: Optional[str] = option(None, "timm scheduler name")
    warmup_epochs: Optional[int] = option(None)
    min_lr: Optional[float] = option(None)
    decay_rate: Optional[float] = option(None, "step schedules' decay factor, the poly schedule's power")
    layer_decay: Optional[float] = option(None, "layer-wise lr decay (timm group_matcher)")
    drop_path: Optional[float] = option(None)
    token_reduction: Optional[str] = option(
        None, "reduce the tokens of a timm ViT while training and in the saved model: METHOD:key=value,..., e.g. "
        "tome:r=13, tome:r=(16,-1), ltmp:flops_ratio=0.7 (trains the thresholds only) or cropr:rate=8 (adds the "
        "auxiliary losses) (vithub.reduce_tokens)")
    mixup: float = option(0.0, "mixup alpha (0: off)")
    cutmix: float = option(0.0, "cutmix alpha (0: off)")
    cutmix_minmax: Optional[List[float]] = option(None, "cutmix area ratio MIN MAX (turns cutmix on; overrides its "
                                                  "alpha)")
    mixup_prob: float = option(1.0, "probability that a batch is mixed (mixup or cutmix)")
    mixup_switch_prob: float = option(0.5, "probability of cutmix instead of mixup when both are on")
    mixup_mode: str = option("batch", "mixup/cutmix drawn per batch, pair or element",
                             choices=("batch", "pair", "elem"))
    smoothing: float = option(0.1)
    bce_loss: bool = option(False, "binary cross-entropy instead of cross-entropy (as timm's --bce-loss)")
    bce_target_thresh: Optional[float] = option(None, "with --bce-loss, targets at or above it become 1")
    # Training augmentation: timm's create_transform (image folders and dataset specs; the digits keep their own).
    aa: Optional[str] = option(None, "AutoAugment policy in timm's syntax, e.g. rand-m9-mstd0.5-inc1, augmix-m5, "
                               "original")
    reprob: float = option(0.0, "random erasing probability")
    remode: str = option("pixel", "random erasing fill", choices=("const", "rand", "pixel"))
    recount: int = option(1, "random erasing count")
    color_jitter: float = option(0.4, "colour jitter strength (timm leaves it out when --aa is set)")
    scale: Optional[List[float]] = option(None, "random-resized-crop scale MIN MAX (default 0.08 1.0)")
    ratio: Optional[List[float]] = option(None, "random-resized-crop aspect ratio MIN MAX (default 0.75 1.333)")
    hflip: float = option(0.5, "horizontal flip probability")
    vflip: float = option(0.0, "vertical flip probability")
    train_interpolation: Optional[str] = option(None, "training resize interpolation (default: the model's)",
                                                choices=("random", "bilinear", "bicubic", "nearest"))
    aug_repeats: int = option(0, "repeated augmentation: each image this many times an epoch, its copies on "
                              "different processes, the epoch as long as without (0: off)")
    # Knowledge distillation (DeiT's losses.py semantics: vithub.train.distillation).
    teacher: Optional[str] = option(None, "distil from this teacher (any timm model, vh_* included)")
    teacher_pretrained: bool = option(False, "the teacher's pretrained weights (its classifier must have the data's "
                                      "classes)")
    teacher_checkpoint: Optional[str] = option(None, "the teacher's weights (.safetensors or a weights-only torch "
                                               "file) for a teacher built with the data's classes")
    distillation: Optional[str] = option(None, "hard (cross-entropy on the teacher's argmax, through the student's "
                                         "distillation head) or soft (KL on temperature-scaled logits); default: hard "
                                         "where the student has a distillation head, else soft",
                                         choices=("hard", "soft"))
    distillation_alpha: float = option(0.5, "weight of the distillation term (1 - alpha: the label loss)")
    distillation_tau: float = option(1.0, "soft distillation's temperature")
    drop: float = option(0.0, "classifier dropout (timm's drop_rate)")
    lr_base: Optional[float] = option(None, "without --lr: the lr for a global batch of --lr-base-size, scaled to "
                                      "the run's global batch (batch x processes x accumulation), as timm does")
    lr_base_size: int = option(256, "the global batch --lr-base is meant for")
    lr_base_scale: Optional[str] = option(None, "how --lr-base scales (default: sqrt for ada*/lamb optimizers, else "
                                          "linear)", choices=("linear", "sqrt"))
    lr_base_bounds: bool = option(False, "with --lr-base, scale --min-lr and --warmup-lr by the same factor (the "
                                  "rule of Swin's main.py)")
    warmup_lr: float = option(1e-5, "lr at the start of the warmup")
    cooldown_epochs: int = option(0, "epochs at --min-lr after the schedule, added to --epochs")
    opt_eps: Optional[float] = option(None, "optimizer epsilon (default: the optimizer's)")
    opt_betas: Optional[List[float]] = option(None, "optimizer betas B1 B2 (default: the optimizer's)")
    momentum: float = option(0.9, "SGD momentum")
    sync_bn: bool = option(False, "synchronise BatchNorm statistics across torchrun processes")
    model_ema: bool = option(False)
    model_ema_decay: float = option(0.998)
    amp: Optional[str] = option(None, "mixed precision (CUDA)", choices=("bfloat16", "float16"))
    grad_accum_steps: int = option(1)
    clip_grad: Optional[float] = option(None, "clip gradients at this norm (value, or AGC factor: --clip-mode)")
    clip_mode: str = option("norm", "how --clip-grad clips (timm's: the head is left out of agc)",
                            choices=("norm", "value", "agc"))
    channels_last: bool = option(False)
    torchcompile: bool = option(False)
    seed: int = option(42)
    img_size: Optional[int] = option(None)
    workers: Optional[int] = option(None, "loader worker processes per process (0: load in the training process); "
                                    "default: the CPUs shared among the node's processes, at most 8 (0 for the "
                                    "embedded digits)", flags=("-j",))
    prefetch_factor: int = option(2, "batches each worker loads ahead")
    resume: Optional[str] = option(None, "'auto' (newest complete checkpoint in --output) or a *.state.pt file")
    checkpoint_every: int = option(0, "also checkpoint every N optimizer steps (0: at epoch ends only)")
    keep_best: int = option(3, "best checkpoints kept (by the task's main metric)")
    device: Optional[str] = option(None)
    progress: Optional[bool] = option(None, "a progress bar (None: when stderr is a terminal)", cli=False)
    wandb: bool = option(False, "log config and metrics to Weights & Biases (WANDB_MODE=offline works without an "
                         "account)", flags=("--log-wandb",))
    wandb_project: str = option("vithub")
    wandb_name: Optional[str] = option(None, "run name (default: the --output folder's name)")
    wandb_tags: Optional[List[str]] = option(None)
    task_options: Dict[str, Any] = option(None, "the task's own options (vithub train shows them per task)", cli=False,
                                          default_factory=dict)

    def check(self) -> None:
        """Raise ``ValueError`` naming the first option out of range (on a config whose task defaults are filled in:
        :meth:`vithub.train.tasks.Task.resolve`)."""
        unresolved = [name for name in TASK_DEFAULTED if getattr(self, name) is None]
        if unresolved:
            raise ValueError(f"{unresolved} are unset: fill in the task's defaults first (Task.resolve)")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "grad_accum_steps": self.grad_accum_steps,
                    "keep_best": self.keep_best}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.checkpoint_every < 0 or (self.workers is not None and self.workers < 0):
            raise ValueError("checkpoint_every and workers must be >= 0")
        if self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {self.prefetch_factor}")
        if self.amp not in (None, "bfloat16", "float16"):
            raise ValueError(f"amp must be None, 'bfloat16' or 'float16', got {self.amp!r}")
        if not 0.0 <= self.max_unreadable <= 1.0:
            raise ValueError(f"max_unreadable must be a fraction in [0, 1], got {self.max_unreadable}")
        self._check_augmentation()

    @property
    def total_epochs(self) -> int:
        """The epochs a run lasts: the schedule's, then the cooldown's."""
        return self.epochs + self.cooldown_epochs

    def _check_augmentation(self) -> None:
        for name in ("reprob", "hflip", "vflip", "mixup_prob", "mixup_switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name, minimum in (("recount", 1), ("aug_repeats", 0), ("lr_base_size", 1), ("cooldown_epochs", 0),
                              ("stream_shuffle_size", 1)):
            if getattr(self, name) < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        for name in ("scale", "ratio", "cutmix_minmax", "opt_betas"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or (name != "opt_betas" and value[0] > value[1])):
                raise ValueError(f"{name} takes two numbers" + ("" if name == "opt_betas" else " MIN MAX, MIN <= MAX")
                                 + f", got {list(value)}")
        if self.recipe_applied:
            from .recipes import get_recipe

            get_recipe(self.recipe_applied).check(self)
        if self.pretrained_head_rows and not self.pretrained_path:
            raise ValueError("pretrained_head_rows picks rows of the classifier in --pretrained-path; give that too")
        if (self.distillation or self.teacher_pretrained or self.teacher_checkpoint) and not self.teacher:
            raise ValueError("distillation, teacher_pretrained and teacher_checkpoint need a teacher (--teacher MODEL)")
        if not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError(f"distillation_alpha must be in [0, 1], got {self.distillation_alpha}")
        if self.distillation_tau <= 0:
            raise ValueError(f"distillation_tau must be > 0, got {self.distillation_tau}")
        if self.lr_base is not None and self.lr_base <= 0:
            raise ValueError(f"lr_base must be > 0, got {self.lr_base}")
        if self.aa:
            from timm.data import create_transform

            try:  # timm parses the policy string when it builds the transform
                create_transform(32, is_training=True, auto_augment=self.aa)
            except Exception as error:
                raise ValueError(f"aa: {self.aa!r} is not an AutoAugment policy timm knows (e.g. "
                                 f"rand-m9-mstd0.5-inc1, augmix-m5, original): {error}") from None


def scaled_lr(config: TrainConfig, world: int) -> float:
    """``config.lr_base`` scaled from a global batch of ``lr_base_size`` to the run's (``batch_size * world *
    grad_accum_steps``): linearly, or by the square root for ada*/lamb optimizers unless ``lr_base_scale`` says,
    as timm's ``train.py`` does."""
    ratio = config.batch_size * world * config.grad_accum_steps / config.lr_base_size
    scale = config.lr_base_scale or ("sqrt" if any(name in config.opt.lower() for name in ("ada", "lamb"))
                                     else "linear")
    return config.lr_base * (ratio ** 0.5 if scale == "sqrt" else ratio)


# Settings that fix the data order and the update count: a resumed run must keep them to continue the same run.
RESUME_FIXED = ("task", "model", "data", "train_split", "train_num_samples", "stream_shuffle_size", "batch_size",
                "grad_accum_steps", "seed", "epochs", "img_size", "task_options", "token_reduction", "aug_repeats",
                "cooldown_epochs", "teacher", "distillation", "distillation_alpha", "distillation_tau")
# Options whose default (None) means "the task's default" (Task.defaults).
TASK_DEFAULTED = ("model", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "sched", "min_lr",
                  "decay_rate")
# What a task's defaults_for leaves out of TASK_DEFAULTED: timm's cosine schedule.
SCHEDULE_DEFAULTS = {"sched": "cosine", "min_lr": 1e-5, "decay_rate": 0.1}


def _argument_kwargs(config_field: Any, hint: Any, absent_when_unset: bool = False,
                     extra_help: str = "") -> Dict[str, Any]:
    """argparse keywords for one field from its type hint: ``bool`` is a switch, ``Optional[X]`` takes an X,
    ``List[X]`` any number of them. ``absent_when_unset``: a flag not given leaves no attribute (its owner fills
    the default)."""
    help_text = "; ".join(text for text in (config_field.metadata["help"], extra_help) if text)
    if config_field.default not in (None, False):
        help_text = f"{help_text} (default: {config_field.default})".lstrip()
    default = argparse.SUPPRESS if absent_when_unset else config_field.default
    kwargs: Dict[str, Any] = {"default": default, "help": help_text or None}
    if config_field.metadata["choices"] is not None:
        kwargs["choices"] = list(config_field.metadata["choices"])
    arguments = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in arguments:
        hint = next(argument for argument in arguments if argument is not type(None))
    if hint is bool:
        if config_field.default:
            raise TypeError(f"{config_field.name}: a switch must default to False")
        return {"action": "store_true", "help": kwargs["help"], "default": default}
    if typing.get_origin(hint) in (list, List):
        kwargs.update(nargs="*", type=typing.get_args(hint)[0])
        return kwargs
    if hint in (int, float):
        kwargs["type"] = hint
    return kwargs


EXPLICIT = "explicit_options"  # the parsed namespace's set of the options given on the command line


class _Given:
    """Mixed into an argparse action: records its option in the namespace's :data:`EXPLICIT` set, so that a
    recipe does not overwrite what was typed (even a value equal to the default)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        super().__call__(parser, namespace, values, option_string)  # type: ignore[misc]
        setattr(namespace, EXPLICIT, set(getattr(namespace, EXPLICIT, None) or ()) | {self.dest})  # type: ignore


class _GivenValue(_Given, argparse._StoreAction):
    pass


class _GivenSwitch(_Given, argparse._StoreTrueAction):
    pass


def add_config_arguments(parser: Any, names: Optional[Iterable[str]] = None,
                         choices: Optional[Dict[str, Sequence[Any]]] = None, config_class: type = None,
                         absent_when_unset: bool = False, extra_help: Optional[Dict[str, str]] = None) -> None:
    """Add a ``--flag`` per field of ``config_class`` (default :class:`TrainConfig`; a task's options class takes
    the same :func:`option` fields): all command-line fields, or those in ``names``, with the field's type, default,
    help and aliases. ``choices`` sets allowed values known only at run time (the registered tasks). ``parser``
    may be an argument group. ``absent_when_unset``: flags that are not given leave no attribute in the parsed
    namespace (task options, whose defaults the task fills in). ``extra_help`` adds text to a field's help (the
    tasks' own defaults, for the fields a task fills in)."""
    config_class = config_class or TrainConfig
    hints = typing.get_type_hints(config_class)
    wanted = None if names is None else list(names)
    for config_field in fields(config_class):
        if not config_field.metadata["cli"] or (wanted is not None and config_field.name not in wanted):
            continue
        kwargs = _argument_kwargs(config_field, hints[config_field.name], absent_when_unset,
                                  (extra_help or {}).get(config_field.name, ""))
        if choices and config_field.name in choices:
            kwargs["choices"] = list(choices[config_field.name])
        flags = ["--" + config_field.name.replace("_", "-"), *config_field.metadata["flags"]]
        kwargs["action"] = _GivenSwitch if kwargs.get("action") == "store_true" else _GivenValue
        parser.add_argument(*flags, dest=config_field.name, **kwargs)


def config_from_args(values: Dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from parsed arguments (or any mapping); keys that are not options are ignored."""
    names = {config_field.name for config_field in fields(TrainConfig)}
    return TrainConfig(**{key: value for key, value in values.items() if key in names})
