"""Bad input an ablation refuses while it plans, before any file is written or any trial starts.

Each check raises a :class:`~lightning_depth.errors.UsageError` whose one line names the value and what to do. The
trial configurations are made independent of the directory they are run from here too: ``trial DIR`` must train
the same thing from anywhere.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_depth.configs import one_line
from lightning_depth.errors import UsageError
from lightning_depth.metrics import BEST_SUFFIX
from lightning_depth.module import LOGGED_METRICS

# The report metric of an ablation: what fit logs, or its best epoch (val/loss_best); trials run fit only.
REPORT_METRICS = (*LOGGED_METRICS["fit"],
                  *(m + BEST_SUFFIX for m in LOGGED_METRICS["fit"] if not m.endswith(BEST_SUFFIX)))


def check_parallel(parallel: Any) -> int:
    """``--parallel``: a whole number of trials at once, at least one (0 used to mean 1 without a word)."""
    if parallel is None:
        return 1
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise UsageError(f"--parallel {parallel}: run at least 1 trial at a time")
    return parallel


def check_metric(metric: str) -> None:
    """The metric the report compares must be one the trials log; a typo would only show after the whole sweep."""
    if metric in REPORT_METRICS:
        return
    if metric in LOGGED_METRICS["test"]:
        raise UsageError(f"ablation.metric {metric}: trials run fit, which logs no test metrics; choose one of "
                         f"{', '.join(LOGGED_METRICS['fit'])}")
    raise UsageError(f"ablation.metric {metric!r} is not logged by ImageClassifier; choose one of "
                     f"{', '.join(LOGGED_METRICS['fit'])} (or one of them with {BEST_SUFFIX} for its best epoch)")


def check_distinct(arms: Sequence[tuple[str, Mapping[str, Any], dict[str, Any]]]) -> None:
    """Two arms must train two configurations: ``lr: [1, 1.0]`` names two arms that the parser reads as one.

    ``arms`` holds (name, overrides, resolved configuration) per arm.
    """
    seen: dict[str, tuple[str, Mapping[str, Any], dict[str, Any]]] = {}
    for name, overrides, resolved in arms:
        key = json.dumps(resolved, sort_keys=True, default=str)
        if key in seen:
            other, other_overrides, _ = seen[key]
            # repr, not ==: 1 == 1.0 in Python, which is the very confusion being reported.
            differ = [k for k in dict.fromkeys([*other_overrides, *overrides])
                      if repr(other_overrides.get(k)) != repr(overrides.get(k))]
            shown = ", ".join(f"{k} = {_dotted(resolved, k)!r}" for k in differ) or "every key"
            raise UsageError(f"arms {other!r} and {name!r} train the same configuration once the parser has read "
                             f"their values ({shown} in both); keep one of them")
        seen[key] = (name, overrides, resolved)


def absolute_paths(cfg: Any) -> None:
    """Make the data module's roots (``root``, ``*_root``) absolute, against the directory the ablation is planned
    from; ``trainer.default_root_dir`` is set absolute by the planner."""
    data = cfg.get("data")
    args = data.get("init_args") if hasattr(data, "get") else None
    if args is None:
        return
    for key in [k for k in args.keys() if "." not in k]:
        value = args[key]
        if (key == "root" or key.endswith("_root")) and isinstance(value, str) and value and "://" not in value:
            args[key] = str(Path(value).expanduser().absolute())


def check_data(configs: Sequence[tuple[str, Any]]) -> None:
    """Build each distinct data module of the (arm name, configuration) pairs and check its data is there.

    A module with a public ``check_data()`` is asked that; any other has its ``prepare_data()`` run, which checks
    for the files (or downloads them once, here, rather than in every trial at the same time).
    """
    seen: set[str] = set()
    several = len({repr(cfg.get("data")) for _, cfg in configs}) > 1
    for arm, cfg in configs:
        data = cfg.get("data")
        if not hasattr(data, "class_path") or repr(data) in seen:
            continue
        seen.add(repr(data))
        prefix = f"data of arm {arm!r}: " if several else ""
        module, _, name = data.class_path.rpartition(".")
        args = data.get("init_args")
        kwargs = args.as_dict() if hasattr(args, "as_dict") else dict(args or {})
        try:
            built = getattr(importlib.import_module(module), name)(**kwargs)
            check = getattr(built, "check_data", None)
            (check if callable(check) else built.prepare_data)()
        except UsageError as err:
            raise UsageError(f"{prefix}{err}") from None
        except (ValueError, TypeError, OSError) as err:
            raise UsageError(f"{prefix}{name}: {one_line(str(err))}") from None


def _dotted(data: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, Mapping) else None
    return data
