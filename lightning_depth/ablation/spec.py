"""The ``ablation:`` section of an experiment file: validation, expansion into arms and trials, stable trial ids.

Pure and deterministic (no torch, no I/O): the same section always expands to the same arms, in the same order, and
the same resolved config always gets the same trial id. Factor keys are the CLI's own dotted keys
(``model.net.init_args.preact``); whether the CLI knows a key is checked by the driver against the real parser.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lightning_depth.errors import UsageError

Design = Literal["factorial", "one_at_a_time", "list"]
DESIGNS: tuple[str, ...] = ("factorial", "one_at_a_time", "list")
ALLOWED_KEYS: tuple[str, ...] = ("name", "design", "factors", "arms", "baseline", "seeds", "metric", "slurm")
DEFAULT_METRIC = "val/acc1"
# Name of the one_at_a_time arm that changes nothing: its other arms are named by the one factor they change.
OAT_BASELINE = "baseline"

_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_DOTTED_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_SLUG = 60
_MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range


@dataclass(frozen=True)
class Arm:
    """One configuration of the design: dotted CLI key -> value, in factor order.

    Args:
        name: stable, readable label (``"block=bottleneck,preact=true"``, or the user's name in a list design).
        overrides: dotted CLI key -> value applied on top of the experiment file.
        is_baseline: whether deltas in the report are measured against this arm.
    """

    name: str
    overrides: dict[str, Any]
    is_baseline: bool = False


@dataclass
class AblationSpec:
    """A validated ``ablation:`` section; build it with :func:`parse_spec`.

    Args:
        name: ablation name, also its directory name.
        design: ``factorial`` (every combination), ``one_at_a_time`` (baseline plus one changed factor per arm)
            or ``list`` (the arms named in ``arms``).
        factors: dotted key -> values. For a list design, derived from the arms (the values they set, in order).
        arms: list design only: arm name -> overrides.
        baseline: factorial / one_at_a_time: the full dict of baseline values; list: the baseline arm's name.
        seeds: the seeds every arm runs with.
        metric: the metric the report compares (``val/...`` accuracies are higher-is-better, losses lower).
        slurm: SLURM options, passed through untouched to the launcher that validates them.
    """

    name: str
    design: Design
    factors: dict[str, list[Any]]
    arms: dict[str, dict[str, Any]]
    baseline: dict[str, Any] | str | None
    seeds: list[int]
    metric: str = DEFAULT_METRIC
    slurm: dict[str, Any] = field(default_factory=dict)


def parse_spec(raw: Mapping[str, Any]) -> AblationSpec:
    """Validate the ``ablation:`` section; every problem is a one-line :class:`UsageError`."""
    if not isinstance(raw, Mapping):
        raise UsageError(f"ablation: expected a mapping, got {_show(raw)}")
    unknown = [str(key) for key in raw if key not in ALLOWED_KEYS]
    if unknown:
        raise UsageError(f"ablation: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(ALLOWED_KEYS)}")
    design = raw.get("design", "factorial")
    if design not in DESIGNS:
        raise UsageError(f"ablation.design: {_show(design)} is not one of {', '.join(DESIGNS)}")
    metric = raw.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str) or not metric:
        raise UsageError(f"ablation.metric: expected a metric key like {DEFAULT_METRIC}, got {_show(metric)}")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, Mapping):
        raise UsageError(f"ablation.slurm: expected a mapping of SLURM options, got {_show(slurm)}")
    name, seeds = _parse_name(raw.get("name")), _parse_seeds(raw.get("seeds"))
    if design == "list":
        if "factors" in raw:
            raise UsageError("ablation.factors: a list design names its arms in ablation.arms instead")
        arms = _parse_arms(raw.get("arms"))
        _check_unique_arm_names(list(arms))
        baseline: dict[str, Any] | str = _parse_list_baseline(raw.get("baseline"), arms)
        factors = _factors_of(arms)
    else:
        if "arms" in raw:
            raise UsageError(f"ablation.arms: only for design: list; design {design} expands ablation.factors")
        factors, arms = _parse_factors(raw.get("factors")), {}
        baseline = _parse_factor_baseline(raw.get("baseline"), factors)
    return AblationSpec(name, design, factors, arms, baseline, seeds, metric, dict(slurm))


def expand(spec: AblationSpec) -> list[Arm]:
    """The arms of ``spec`` in a fixed order; the baseline arm is first for the factor designs."""
    if spec.design == "list":
        return [Arm(name, dict(over), name == spec.baseline) for name, over in spec.arms.items()]
    base = spec.baseline if isinstance(spec.baseline, Mapping) else {}
    base = {key: base.get(key, values[0]) for key, values in spec.factors.items()}
    labels = _value_labels(spec.factors)
    shorts = short_keys(list(spec.factors))

    def name_of(keys: list[str], over: Mapping[str, Any]) -> str:
        return ",".join(f"{shorts[k]}={labels[k][_canonical(over[k])]}" for k in keys)

    if spec.design == "one_at_a_time":
        arms = [Arm(OAT_BASELINE, dict(base), True)]
        for key, values in spec.factors.items():
            for value in values:
                if _canonical(value) != _canonical(base[key]):
                    over = {**base, key: value}
                    arms.append(Arm(name_of([key], over), over, False))
        return arms
    keys = list(spec.factors)
    combos = [dict(zip(keys, combo)) for combo in itertools.product(*spec.factors.values())]
    combos.sort(key=lambda over: _canonical(over) != _canonical(base))  # stable: baseline first, then product order
    return [Arm(name_of(keys, over), over, _canonical(over) == _canonical(base)) for over in combos]


def trials(spec: AblationSpec) -> list[tuple[Arm, int]]:
    """Every (arm, seed), seed by seed: the first results to arrive cover every arm."""
    arms = expand(spec)
    return [(arm, seed) for seed in spec.seeds for arm in arms]


def trial_id(arm: Arm, seed: int, resolved_config: Mapping[str, Any]) -> str:
    """A stable, content-addressed id: ``<arm slug>-s<seed>-<10 hex of sha256(config, seed)>``.

    Contract: ``resolved_config`` is the plain data written to the trial's ``config.yaml`` *without* anything
    specific to one run (output directories, logger save dirs, W&B run ids), so relaunching the same ablation, from
    any machine or directory, finds the same ids and resumes instead of duplicating.
    """
    digest = hashlib.sha256(_canonical({"config": resolved_config, "seed": seed}).encode()).hexdigest()
    return f"{slug(arm.name)}-s{seed}-{digest[:10]}"


def slug(name: str) -> str:
    """A filesystem-safe, readable arm name: ``block=bottleneck,preact=true`` -> ``block-bottleneck_preact-true``."""
    text = _UNSAFE_CHARS.sub("_", name.replace("=", "-")).strip("._-")
    return text[:_MAX_SLUG].rstrip("._-") or "arm"


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key shares (``a.b.preact`` -> ``preact``)."""
    parts = {key: key.split(".") for key in keys}
    shorts = {}
    for key, comps in parts.items():
        for n in range(1, len(comps) + 1):
            suffix = comps[-n:]
            if all(other[-n:] != suffix for k, other in parts.items() if k != key):
                break
        shorts[key] = ".".join(suffix)
    return shorts


def render_value(value: Any) -> str:
    """A value as it reads in YAML: ``true``, ``null``, ``0.1``, ``bottleneck``; a class_path dict by its class name."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, Mapping) and set(value) <= {"class_path", "init_args"} and "class_path" in value:
        return str(value["class_path"]).rsplit(".", 1)[-1]
    if isinstance(value, (str, int, float)):
        return str(value)
    return _canonical(value)


def _value_labels(factors: Mapping[str, list[Any]]) -> dict[str, dict[str, str]]:
    """Per factor: canonical value -> label; falls back to canonical JSON where short labels would collide."""
    labels = {}
    for key, values in factors.items():
        short = {_canonical(v): render_value(v) for v in values}
        if len(set(short.values())) < len(short):
            short = {c: c for c in short}
        labels[key] = short
    return labels


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot hash a {type(obj).__name__} in a config; pass plain YAML data (dicts, lists, scalars)")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_name(name: Any) -> str:
    if name is None:
        raise UsageError("ablation.name: missing; name the ablation, e.g. name: preact (it becomes a directory)")
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in {".", ".."}:
        raise UsageError(f"ablation.name: {_show(name)} is not a safe directory name (letters, digits, _ . -)")
    return name


def _parse_seeds(seeds: Any) -> list[int]:
    if seeds is None:
        raise UsageError("ablation.seeds: missing; every arm runs over several seeds, e.g. seeds: [0, 1, 2]")
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise UsageError(f"ablation.seeds: expected a non-empty list of integers, got {_show(seeds)}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
            raise UsageError(f"ablation.seeds: {_show(seed)} is not an integer seed in [0, 2**32 - 1]")
    dups = sorted({s for s in seeds if seeds.count(s) > 1})
    if dups:
        raise UsageError(f"ablation.seeds: duplicated seed(s) {', '.join(map(str, dups))}")
    return list(seeds)


def _check_key(key: Any, where: str) -> str:
    if key == "seed_everything":
        raise UsageError(f"{where}: seed_everything is set from ablation.seeds, not varied as a factor")
    if not isinstance(key, str) or not _DOTTED_KEY.fullmatch(key):
        raise UsageError(f"{where}: {_show(key)} is not a dotted config key like model.net.init_args.preact")
    return key


def _parse_factors(factors: Any) -> dict[str, list[Any]]:
    if not isinstance(factors, Mapping) or not factors:
        raise UsageError(f"ablation.factors: expected a mapping of dotted key -> list of values, got {_show(factors)}")
    parsed = {}
    for key, values in factors.items():
        _check_key(key, "ablation.factors")
        if not isinstance(values, (list, tuple)):
            raise UsageError(f"ablation.factors.{key}: expected a list of values, got {_show(values)}")
        if not values:
            raise UsageError(f"ablation.factors.{key}: empty list of values")
        seen = [_canonical(v) for v in values]
        dups = [v for i, v in enumerate(seen) if v in seen[:i]]
        if dups:
            raise UsageError(f"ablation.factors.{key}: duplicated value(s) {', '.join(dups)}")
        parsed[key] = list(values)
    return parsed


def _parse_factor_baseline(baseline: Any, factors: Mapping[str, list[Any]]) -> dict[str, Any]:
    """A partial baseline is completed with each factor's first value."""
    if baseline is None:
        baseline = {}
    if not isinstance(baseline, Mapping):
        raise UsageError(f"ablation.baseline: expected a mapping of factor -> value, got {_show(baseline)}")
    for key, value in baseline.items():
        if key not in factors:
            raise UsageError(f"ablation.baseline: {_show(key)} is not a factor; factors: {', '.join(factors)}")
        if _canonical(value) not in {_canonical(v) for v in factors[key]}:
            allowed = _show(factors[key])
            raise UsageError(f"ablation.baseline.{key}: {_show(value)} is not among the factor's values {allowed}")
    return {key: baseline.get(key, values[0]) for key, values in factors.items()}


def _parse_arms(arms: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(arms, Mapping) or not arms:
        raise UsageError(f"ablation.arms: a list design needs a mapping of arm name -> overrides, got {_show(arms)}")
    parsed: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for name, overrides in arms.items():
        if not isinstance(name, str) or not name.strip():
            raise UsageError(f"ablation.arms: arm name {_show(name)} is not a non-empty string")
        overrides = {} if overrides is None else overrides
        if not isinstance(overrides, Mapping):
            raise UsageError(f"ablation.arms.{name}: expected a mapping of dotted key -> value, got {_show(overrides)}")
        for key in overrides:
            _check_key(key, f"ablation.arms.{name}")
        canon = _canonical(overrides)
        if canon in seen:
            raise UsageError(f"ablation.arms: {seen[canon]} and {name} have identical overrides")
        seen[canon] = name
        parsed[name] = dict(overrides)
    return parsed


def _parse_list_baseline(baseline: Any, arms: Mapping[str, Any]) -> str:
    """Default: the first arm listed."""
    if baseline is None:
        return next(iter(arms))
    if not isinstance(baseline, str) or baseline not in arms:
        raise UsageError(f"ablation.baseline: {_show(baseline)} is not among the arms {', '.join(arms)}")
    return baseline


def _factors_of(arms: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Any]]:
    """What a list design varies: every key any arm sets, with its distinct values in order of appearance."""
    factors: dict[str, list[Any]] = {}
    for overrides in arms.values():
        for key, value in overrides.items():
            values = factors.setdefault(key, [])
            if _canonical(value) not in {_canonical(v) for v in values}:
                values.append(value)
    return factors


def _check_unique_arm_names(names: list[str]) -> None:
    """Trial directories start with the arm's slug: two arms must not read the same there (any letter case)."""
    seen: dict[str, str] = {}
    for name in names:
        key = slug(name).lower()
        if key in seen:
            raise UsageError(f"ablation.arms: duplicate arm names {seen[key]!r} and {name!r} (same directory name)")
        seen[key] = name
