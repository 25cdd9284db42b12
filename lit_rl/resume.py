"""Resuming a run: is the checkpoint this run's, which changed settings are honoured, which metrics rows stay.

A resume continues exactly the run that wrote the checkpoint, or is refused with the settings that differ
(:class:`~lit_rl.errors.ResumeMismatch`). The algorithm, its settings, the data, the optimizer and the seed
*are* the run: any difference is refused (a learning rate, for one, would otherwise be dropped silently, since
the optimizer's saved state carries the old one). Trainer settings say how long and where the run goes
(``max_steps``, intervals, callbacks, loggers): they are honoured, and listed.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_rl.errors import ResumeMismatch

RUN_KEYS = ("seed_everything", "model", "data", "optimizer", "lr_scheduler")   # what a resume may not change
HONOURED_KEYS = ("trainer",)                                                   # what it may, said aloud
RECORD = "lit_rl"                                                              # the checkpoint's key for it
MODULE_KEY = "lit_rl_module"
# Settings added to a module after checkpoints were written: one written before ran with this value.
ADDED_SETTINGS = {"model.init_args.num_iterations": 1, "model.init_args.mini_batches": 1,
                  "model.init_args.shared_prompt_forward": False, "model.init_args.packed_sequences": False,
                  "model.init_args.val_samples": 1, "model.init_args.model_kwargs": None,
                  "model.init_args.sync_every_n_steps": 1, "model.init_args.max_staleness": 0,
                  "model.init_args.importance_sampling": None, "model.init_args.max_tokens_per_micro_batch": None,
                  "model.init_args.critic": None, "model.init_args.engine.init_args.seeded": False}
# Settings that change what is logged, not the run: a resume may switch them.
LOGGING_SETTINGS = frozenset({"model.init_args.log_kl"})


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [{"d": 2}]}`` -> ``{"a.b": 1, "c.0.d": 2}``: lists by index too, so a setting added
    to a class inside a list (a component of ``Rewards``) is a leaf of its own, taken at its default like any
    other; scalars and empty containers are leaves."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out if out or not prefix else {prefix: config}


def differences(saved: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, current value)`` for every leaf under ``keys`` that differs."""
    a = flatten({k: saved.get(k) for k in keys})
    b = flatten({k: current.get(k) for k in keys})
    a.update({k: v for k, v in ADDED_SETTINGS.items() if k in b and k not in a and "model" in saved})
    missing = object()
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted((set(a) | set(b)) - LOGGING_SETTINGS)
            if a.get(k, missing) != b.get(k, missing) and not (a.get(k) is None and b.get(k) is None)]


def _show(value: Any) -> str:
    return "(absent)" if type(value) is object else repr(value)


def describe_differences(diffs: list[tuple[str, Any, Any]], saved: str = "the checkpoint", limit: int = 8) -> str:
    """One line per difference; a changed class comes first and stands for all of its settings."""
    swapped = [key[:-len("class_path")] for key, _, _ in diffs if key.endswith("class_path")]
    diffs = [d for d in diffs if not any(d[0].startswith(p) and d[0] != p + "class_path" for p in swapped)]
    diffs.sort(key=lambda d: (not d[0].endswith("class_path"), d[0] != "model.class_path"))
    lines = [f"  {'algorithm' if key == 'model.class_path' else key}: {_show(a)} in {saved}, {_show(b)} now"
             + (" (and its settings)" if key.endswith("class_path") else "") for key, a, b in diffs[:limit]]
    if len(diffs) > limit:
        lines.append(f"  ... and {len(diffs) - limit} more")
    return "\n".join(lines)


def model_section(hyper_parameters: dict[str, Any]) -> dict[str, Any]:
    """The CLI's ``model`` config as a checkpoint written without lit-rl's record stores it (Lightning's form)."""
    hparams = {k: v for k, v in hyper_parameters.items() if k != "_instantiator"}
    return {"class_path": hparams.pop("_class_path", None), "init_args": hparams}


@dataclass
class ResumePlan:
    """What a checked resume continues: the checkpoint, its step, the run directory it belongs to (when it is a
    lit-rl run directory), the trainer settings that changed and are honoured, and what the checkpoint recorded."""

    path: Path
    global_step: int
    log_step: int                                                        # the logging step of its own batch
    algorithm: str
    run_dir: Path | None = None
    honoured: list[tuple[str, Any, Any]] = field(default_factory=list)
    summary_before: dict[str, float] | None = None
    pending_row: dict[str, Any] | None = None                           # see lit_rl.csv_logger.pending_row
    carried: dict[str, Any] | None = None
    checked: str = "same algorithm, model, data and settings"

    def announcement(self, subcommand: str) -> str:
        line = (f"lit-rl {subcommand}: resuming the {self.algorithm} run of {self.path} at step {self.global_step}: "
                f"{self.checked}")
        if self.honoured:
            line += "; changed and honoured: " + "; ".join(f"{k} {_show(a)} -> {_show(b)}" for k, a, b in self.honoured)
        if self.run_dir is not None:
            line += f"; continuing in {self.run_dir}"
        return line


def plan_resume(path: str | Path, checkpoint: dict[str, Any], current: dict[str, Any]) -> ResumePlan:
    """Compare a checkpoint with the configuration of this command; refuse a mismatch naming every difference.

    ``current`` is the subcommand's config as dumped by the CLI (``seed_everything``, ``trainer``, ``model``,
    ``data``, ...). A checkpoint written by lit-rl's CLI carries its run's full config; an older one only its
    module's hyperparameters, so only the model section can be checked (and that is said)."""
    path = Path(path)
    record = checkpoint.get(RECORD)
    if record is not None:
        saved, keys = record["config"], RUN_KEYS
    elif checkpoint.get("hyper_parameters", {}).get("_class_path"):
        saved, keys = {"model": model_section(checkpoint["hyper_parameters"])}, ("model",)
    else:
        raise ResumeMismatch(f"{path} holds no record of the run that wrote it (it was not written by lit-rl's "
                             f"CLI), so a resume cannot check that it continues that run; resume it from Python "
                             f"with the module that wrote it, or start a new run")
    current_model = current.get("model") or {}
    if record is None:                                                   # Lightning's form keeps no nested init_args
        current_model = {"class_path": current_model.get("class_path"),
                         "init_args": {k: v for k, v in (current_model.get("init_args") or {}).items()
                                       if k in saved["model"]["init_args"]}}
    diffs = differences(in_current_form(saved), in_current_form({**current, "model": current_model}), keys)
    if diffs:
        run_dir = _run_dir(path)
        hint = f"--config {run_dir / 'config.yaml'}" if run_dir else "its config"
        raise ResumeMismatch(
            f"{path} was written by another run than this command describes, and resuming would silently change "
            f"it:\n{describe_differences(diffs)}\nResume with the run's own settings ({hint}), or start a new run "
            f"(a resume may change trainer settings such as max_steps, nothing else)")
    honoured = differences(record["config"], current, HONOURED_KEYS) if record is not None else []
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    return ResumePlan(
        path=path, global_step=int(checkpoint.get("global_step", 0)),
        log_step=int(loops.get("epoch_loop.state_dict", {}).get("_batches_that_stepped", 0)),
        algorithm=str(saved["model"].get("class_path")), run_dir=_run_dir(path), honoured=honoured,
        summary_before=(record or {}).get("summary_before"), pending_row=(record or {}).get("pending_row"),
        carried=(record or {}).get("carried"),
        **({} if record is not None else {"checked": "same algorithm and module settings (a checkpoint of an older "
                                                     "lit-rl records nothing else: data and optimizer are unchecked)"}))


def in_current_form(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with its module's settings in today's form (the module class's ``canonical_settings``): a
    checkpoint written when GRPO's or an ERPD teacher's loss was a string compares equal to the same run
    configured with the loss value. A class that cannot be imported is left as it is."""
    import importlib

    model = config.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("class_path"), str) or not isinstance(
            model.get("init_args"), dict):
        return config
    module_path, _, name = model["class_path"].rpartition(".")
    try:
        module_class = getattr(importlib.import_module(module_path), name)
    except (ImportError, AttributeError, ValueError):
        return config
    canonical = getattr(module_class, "canonical_settings", None)
    if canonical is None:
        return config
    return {**config, "model": {**model, "init_args": canonical(model["init_args"])}}


def _run_dir(checkpoint_path: Path) -> Path | None:
    """``<run dir>/checkpoints/X.ckpt`` of a run directory the CLI made (it holds ``config.yaml``)."""
    parent = checkpoint_path.resolve().parent
    if parent.name == "checkpoints" and (parent.parent / "config.yaml").is_file():
        return parent.parent
    return None


def module_mismatch(checkpoint: dict[str, Any], module_class: type, hparams: dict[str, Any]) -> str | None:
    """Why a module cannot continue from ``checkpoint`` (another algorithm or other settings), or ``None``.
    The guard for resumes from Python (``Trainer.fit(module, ckpt_path=...)``); the CLI checks the whole config."""
    saved_class = checkpoint.get(MODULE_KEY) or checkpoint.get("hyper_parameters", {}).get("_class_path")
    if saved_class and saved_class.rsplit(".", 1)[-1] != module_class.__name__:
        return f"the checkpoint was written by {saved_class}, and this module is {module_class.__qualname__}"
    # describe(): the CLI saves settings as dicts, Python as dataclasses; compare what they hold
    saved = {k: describe(v) for k, v in checkpoint.get("hyper_parameters", {}).items()
             if k not in ("_class_path", "_instantiator")}
    if saved:
        added = {k.removeprefix("model.init_args."): v for k, v in ADDED_SETTINGS.items()}
        saved = module_class.canonical_settings({**{k: v for k, v in added.items() if k in hparams}, **saved})
    current = module_class.canonical_settings({k: describe(v) for k, v in hparams.items()
                                               if k not in ("_class_path", "_instantiator")})
    logging = {k.removeprefix("model.init_args.") for k in LOGGING_SETTINGS}
    diffs = [(k, saved.get(k, object()), current.get(k, object())) for k in sorted((set(saved) | set(current)) - logging)
             if saved.get(k, object()) != current.get(k, object())]
    if diffs:
        return (f"the checkpoint's run had other settings than this {module_class.__qualname__}:\n"
                f"{describe_differences(diffs)}")
    return None


# ------------------------------------------------------------------------------- settings of plain objects
def describe(obj: Any) -> Any:
    """A JSON-able description of a setting: scalars as they are, dataclasses field by field, and an object
    as ``{"class_path", "init_args"}`` read back from its hyperparameters or attributes of the same name as its
    ``__init__`` arguments (what ``lit-rl generate`` compares on a resume; objects are equal when built alike)."""
    import dataclasses
    import inspect

    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        settings = {f.name: describe(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        from lit_rl.losses import TokenLoss

        if isinstance(obj, TokenLoss):                                  # chosen by class_path: as configs write it
            return {"class_path": f"{type(obj).__module__}.{type(obj).__qualname__}", "init_args": settings}
        return settings
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    import torch

    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    cls = type(obj)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if inspect.isroutine(obj) or isinstance(obj, (torch.nn.Module, torch.Tensor)):
        return name                                                      # a bound model, a function: its kind
    hparams = getattr(obj, "hparams", None) or {}
    try:
        params = [p for p, spec in inspect.signature(cls.__init__).parameters.items()
                  if p != "self" and spec.kind not in (spec.VAR_POSITIONAL, spec.VAR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    init_args = {}
    for p in params:
        if p in hparams:
            init_args[p] = describe(hparams[p])
        elif p in getattr(obj, "__dict__", {}):
            init_args[p] = describe(obj.__dict__[p])
    return {"class_path": name, "init_args": init_args}
