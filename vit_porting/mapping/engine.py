"""The declarative mapping engine: PyTorch state_dict keys <-> Keras variable paths.

A mapping file (a family's ``<family>.yaml``, schema in ``docs/mapping.md``) lists rules
``from`` a source key pattern ``to`` a Keras variable path pattern with a named transform.
The engine is strict: a port is refused, in one error that names every offender, when a
source key is unused, a Keras variable is unassigned, a key is claimed by two rules, a
variable is assigned twice, or a shape disagrees. Nothing is dropped unless the mapping says
so, with a reason.

The same rules run backwards (Keras weights -> state_dict) through each transform's
inverse, which is what proves a port bit-exact.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field, replace
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vit_porting.families.base import Family, Layout
from vit_porting.mapping.tensor_io import LazyArray
from vit_porting.mapping.transforms import TRANSFORMS, get_transform

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MappingFileError(ValueError):
    """A mapping file that cannot be read: names the file and the line, on one line."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        message = " ".join(str(message).split())  # YAML problems and reprs may hold newlines
        self.path, self.line, self.message = str(path), line, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")


@dataclass
class ShapeMismatch:
    rule: str
    source_key: str
    target: str
    source_shape: tuple
    transformed_shape: tuple
    target_shape: tuple

    def __str__(self) -> str:
        return (f"{self.source_key} -> {self.target} via {self.rule}: source {self.source_shape}, "
                f"transformed {self.transformed_shape}, Keras {self.target_shape}")


@dataclass
class MappingError(ValueError):
    """Everything that stops a port, gathered so one run shows every problem; the first line
    counts them, the lines below name each."""

    mapping_path: str
    unused_sources: dict[str, tuple] = field(default_factory=dict)
    unassigned_targets: dict[str, tuple] = field(default_factory=dict)
    multiply_matched: dict[str, list[str]] = field(default_factory=dict)
    assigned_twice: dict[str, list[str]] = field(default_factory=dict)
    shape_mismatches: list[ShapeMismatch] = field(default_factory=list)
    source_name: str = "checkpoint"
    # "file:line (from -> to)" of a rule -> what is wrong with it
    unknown_targets: dict[str, str] = field(default_factory=dict)
    unmatched_rules: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.unused_sources or self.unassigned_targets or self.multiply_matched
                    or self.assigned_twice or self.shape_mismatches or self.unknown_targets
                    or self.unmatched_rules)

    def __str__(self) -> str:
        sections = [
            ("rules whose 'to' names no Keras variable",
             [f"{rule}: {problem}" for rule, problem in self.unknown_targets.items()]),
            ("rules that match no source key (a typo in 'from'?)", self.unmatched_rules),
            ("source keys no rule used", [f"{k} {tuple(s)}" for k, s in sorted(self.unused_sources.items())]),
            ("Keras variables no rule assigned",
             [f"{k} {tuple(s)}" for k, s in sorted(self.unassigned_targets.items())]),
            ("keys matched by two or more rules",
             [f"{k}: {' and '.join(r)}" for k, r in sorted(self.multiply_matched.items())]),
            ("Keras variables assigned more than once",
             [f"{k}: from {', '.join(s)}" for k, s in sorted(self.assigned_twice.items())]),
            ("shape mismatches", [str(m) for m in self.shape_mismatches]),
        ]
        found = [(title, items) for title, items in sections if items]
        lines = [f"{self.mapping_path} cannot map {self.source_name}: "
                 + "; ".join(f"{len(items)} {title.split(' (')[0]}" for title, items in found)]
        for title, items in found:
            # A checkpoint of the wrong family fails on every key; the first ones and the
            # counts say so without burying the terminal.
            limit = 25
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    - {item}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more")
        return "\n".join(lines)


def _compile_pattern(pattern: str) -> tuple[re.Pattern, tuple[str, ...]]:
    parts, names, pos = [], [], 0
    for match in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[pos:match.start()]))
        name = match.group(1)
        if name in names:
            parts.append(f"(?P={name})")
        else:
            names.append(name)
            parts.append(f"(?P<{name}>[0-9]+)")
        pos = match.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(parts) + "$"), tuple(names)


def _check_placeholders(pattern: str, path: Path | str, line: int, what: str) -> set[str]:
    names = set()
    for match in _PLACEHOLDER.finditer(pattern):
        name = match.group(1)
        if not _IDENTIFIER.match(name):
            raise MappingFileError(path, line, f"bad placeholder {{{name}}} in {what} {pattern!r}: "
                                   "placeholders are names like {i}")
        names.add(name)
    leftover = _PLACEHOLDER.sub("", pattern)
    if "{" in leftover or "}" in leftover:
        raise MappingFileError(path, line, f"unbalanced brace in {what} {pattern!r}")
    return names


@dataclass(frozen=True)
class Rule:
    source: str
    target: str
    transform: str
    line: int
    source_regex: re.Pattern
    target_regex: re.Pattern
    when: str | None = None  # a config field (or "not <field>"): the rule exists only where it holds

    def describe(self) -> str:
        return f"rule at line {self.line} ({self.source} -> {self.target}, {self.transform})"

    def target_for(self, source_key: str) -> str | None:
        match = self.source_regex.match(source_key)
        return self.target.format(**match.groupdict()) if match else None

    def source_for(self, target_path: str) -> str | None:
        match = self.target_regex.match(target_path)
        return self.source.format(**match.groupdict()) if match else None


@dataclass(frozen=True)
class Drop:
    pattern: str
    reason: str
    line: int
    regex: re.Pattern
    # Optional: written back by ``backward`` (a buffer Keras has no variable for, e.g. BatchNorm's
    # num_batches_tracked) once for every produced key matching ``beside``, with its placeholders.
    restore: Restore | None = None


@dataclass(frozen=True)
class Restore:
    value: Any
    dtype: str
    beside: str
    beside_regex: re.Pattern

    def array(self) -> np.ndarray:
        return np.asarray(self.value, dtype=self.dtype)


@dataclass(frozen=True)
class Rename:
    """A regex substitution applied to source keys before matching (checkpoint prefixes...)."""

    pattern: re.Pattern
    replace: str
    line: int

    def apply(self, key: str, path: str) -> str:
        """``key`` substituted; a replacement that names a group the pattern lacks is found only
        when it first matches, and is then the file's error (path:line), not a traceback."""
        try:
            return self.pattern.sub(self.replace, key)
        except (re.error, IndexError) as exc:
            raise MappingFileError(path, self.line, f"bad rename replacement {self.replace!r}: {exc}") from None


class _Renames:
    """``rename_key`` of a file's ``rename`` list (mapping files and rename files)."""

    renames: list[Rename]
    path: str

    def rename_key(self, key: str) -> str:
        for rename in self.renames:
            key = rename.apply(key, self.path)
        return key


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records each mapping's line and refuses duplicate keys."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, f"a key must be a plain value, not {key!r}",
                                                    key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

def _yaml_error_line(exc: yaml.MarkedYAMLError) -> int | None:
    """The line to blame. A construct left open (a flow mapping without its '}', a quote without
    its end, a key without its ':') is noticed only where the next one starts, often the next
    line or the end of the file: the line where the open construct began is the broken one."""
    opened = exc.context and exc.context_mark and exc.context.startswith(("while scanning a", "while parsing a flow"))
    mark = exc.context_mark if opened else exc.problem_mark or exc.context_mark
    return mark.line + 1 if mark else None


def read_yaml(path: Path | Traversable, what: str) -> Any:
    """Parse a mapping or rename file; YAML errors name the file and the line."""
    if not path.is_file():
        raise MappingFileError(path, None, f"{what} not found")
    try:
        return yaml.load(path.read_text(), Loader=_LineLoader)  # noqa: S506 (SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        detail = exc.problem or exc.context
        if exc.problem and exc.context:
            detail = f"{exc.problem} ({exc.context})"
        raise MappingFileError(path, _yaml_error_line(exc), f"YAML error: {detail}") from None
    except yaml.YAMLError as exc:
        raise MappingFileError(path, None, f"YAML error: {exc}") from None
    except UnicodeDecodeError:
        raise MappingFileError(path, None, f"{what} is not UTF-8 text") from None
    except OSError as exc:
        raise MappingFileError(path, None, f"cannot read the {what}: {exc.strerror}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a value YAML cannot build: 2001-13-45
        raise MappingFileError(path, None, f"YAML error: {type(exc).__name__}: {exc}") from None


_TOP_KEYS = {"family", "source", "description", "rename", "rules", "drop"}
_WHEN = re.compile(r"^(not )?[A-Za-z_]\w*$")


@dataclass
class MappingSpec(_Renames):
    path: str
    family: str
    source: str
    rules: list[Rule]
    drops: list[Drop] = field(default_factory=list)
    renames: list[Rename] = field(default_factory=list)

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | Traversable) -> MappingSpec:
        """A mapping file: a path, or a family's package resource (``family_mapping``)."""
        path = Path(path) if isinstance(path, str) else path
        return cls.from_data(read_yaml(path, "mapping file"), path)

    @classmethod
    def from_data(cls, data: Any, path: str | Path = "<mapping>") -> MappingSpec:
        if not isinstance(data, dict):
            raise MappingFileError(path, 1, "a mapping file is a YAML mapping with 'family' and 'rules'")
        unknown = set(data) - _TOP_KEYS - {"__line__"}
        if unknown:
            raise MappingFileError(path, data.get("__line__"),
                                   f"unknown top-level keys {sorted(unknown, key=str)}; allowed: {sorted(_TOP_KEYS)}")
        for key in ("family", "rules"):
            if key not in data:
                raise MappingFileError(path, data.get("__line__"), f"missing top-level key {key!r}")
        rules, targets = [], {}
        if not isinstance(data["rules"], list) or not data["rules"]:
            raise MappingFileError(path, data.get("__line__"), "'rules' must be a non-empty list")
        for entry in data["rules"]:
            rules.append(cls._rule(entry, path, targets))
        for key in ("drop", "rename"):
            if not isinstance(data.get(key) or [], list):
                raise MappingFileError(path, data.get("__line__"), f"'{key}' must be a list")
        drops = [cls._drop(entry, path) for entry in data.get("drop") or []]
        renames = [cls._rename(entry, path) for entry in data.get("rename") or []]
        return cls(str(path), str(data["family"]), str(data.get("source", "")), rules, drops, renames)

    @staticmethod
    def _rule(entry: Any, path: Path | str, targets: dict[str, int]) -> Rule:
        if not isinstance(entry, dict):
            raise MappingFileError(path, None, f"each rule is a mapping with from/to/transform, got {entry!r}")
        line = entry.get("__line__")
        missing = [k for k in ("from", "to") if k not in entry]
        if missing:
            raise MappingFileError(path, line, f"rule is missing {', '.join(missing)}")
        extra = set(entry) - {"from", "to", "transform", "when", "__line__"}
        if extra:
            raise MappingFileError(path, line, f"unknown rule keys {sorted(extra, key=str)}")
        source, target = str(entry["from"]), str(entry["to"])
        transform = str(entry.get("transform", "identity"))
        if transform not in TRANSFORMS:
            raise MappingFileError(path, line, f"unknown transform {transform!r}; known: {sorted(TRANSFORMS)}")
        source_names = _check_placeholders(source, path, line, "'from'")
        target_names = _check_placeholders(target, path, line, "'to'")
        if source_names != target_names:
            raise MappingFileError(
                path, line, f"placeholders differ between from {sorted(source_names)} and to "
                f"{sorted(target_names)}: each must appear on both sides")
        if target in targets:
            raise MappingFileError(path, line, f"duplicate target {target!r} (also at line {targets[target]})")
        targets[target] = line
        when = entry.get("when")
        if when is not None and not (isinstance(when, str) and _WHEN.match(when)):
            raise MappingFileError(path, line, f"'when' is a config field name or 'not <field>', got {when!r}")
        source_regex, _ = _compile_pattern(source)
        target_regex, _ = _compile_pattern(target)
        return Rule(source, target, transform, line, source_regex, target_regex, when)

    @staticmethod
    def _drop(entry: Any, path: Path | str) -> Drop:
        if not isinstance(entry, dict) or "key" not in entry or not entry.get("reason"):
            line = entry.get("__line__") if isinstance(entry, dict) else None
            raise MappingFileError(path, line, "each drop needs 'key' and a non-empty 'reason'")
        line = entry.get("__line__")
        extra = set(entry) - {"key", "reason", "restore", "__line__"}
        if extra:
            raise MappingFileError(path, line, f"unknown drop keys {sorted(extra, key=str)}")
        names = _check_placeholders(str(entry["key"]), path, line, "drop key")
        restore = None
        if entry.get("restore") is not None:
            spec = entry["restore"]
            if not isinstance(spec, dict) or {"value", "dtype", "beside"} - set(spec):
                raise MappingFileError(path, line, "a drop's 'restore' needs 'value', 'dtype' and 'beside' "
                                       "(a source key pattern it is written next to)")
            beside = str(spec["beside"])
            if names - _check_placeholders(beside, path, line, "restore beside"):
                raise MappingFileError(path, line, f"restore beside {beside!r} must have every placeholder "
                                       f"of the drop key {sorted(names)}")
            try:
                dtype = np.dtype(str(spec["dtype"]))
            except TypeError:
                raise MappingFileError(path, line, f"restore dtype {spec['dtype']!r} is not a numpy dtype") from None
            try:
                np.asarray(spec["value"], dtype=dtype)
            except (TypeError, ValueError, OverflowError):
                raise MappingFileError(path, line, f"restore value {spec['value']!r} is not a {dtype} value") from None
            restore = Restore(spec["value"], str(spec["dtype"]), beside, _compile_pattern(beside)[0])
        return Drop(str(entry["key"]), str(entry["reason"]), line, _compile_pattern(str(entry["key"]))[0],
                    restore)

    @staticmethod
    def _rename(entry: Any, path: Path | str) -> Rename:
        if not isinstance(entry, dict) or "pattern" not in entry or "replace" not in entry:
            line = entry.get("__line__") if isinstance(entry, dict) else None
            raise MappingFileError(path, line, "each rename needs 'pattern' (a regex) and 'replace'")
        try:
            regex = re.compile(str(entry["pattern"]))
        except (re.error, OverflowError, RecursionError) as exc:
            raise MappingFileError(path, entry["__line__"], f"bad rename pattern: {exc}") from None
        return Rename(regex, str(entry["replace"]), entry["__line__"])

    # -- forward -----------------------------------------------------------------------------
    def for_config(self, config: Any) -> MappingSpec:
        """The rules that exist for a model of ``config``: a rule with ``when: field`` only where
        that field (or property) of the config is true, ``when: not field`` where it is false.
        The others are left out, so their keys count as unused and their variables as unknown:
        strictness is kept per config. A field the config lacks is refused with the rule's line."""
        rules = []
        for rule in self.rules:
            if rule.when is None:
                rules.append(rule)
                continue
            negate, name = rule.when.startswith("not "), rule.when.removeprefix("not ")
            if not hasattr(config, name):
                raise MappingFileError(self.path, rule.line, f"when: {rule.when!r}: {type(config).__name__} has no "
                                       f"field {name!r}")
            if bool(getattr(config, name)) != negate:
                rules.append(rule)
        return replace(self, rules=rules)

    def rule_at(self, rule: Rule) -> str:
        """``file:line (from -> to)``: where to fix a rule."""
        return f"{self.path}:{rule.line} ({rule.source} -> {rule.target})"

    def plan(self, source_shapes: MappingABC[str, tuple], target_shapes: MappingABC[str, tuple],
             keep_unassigned: tuple[str, ...] = (), source_name: str = "checkpoint",
             may_be_absent: tuple[str, ...] = ()) -> dict[str, tuple[str, Rule]]:
        """Check a port without touching data: {target path: (source key, rule)} or MappingError.

        ``keep_unassigned`` names Keras variables left as initialised on purpose (a new
        classifier head of another class count). A rule that matches no source key is refused
        (in every case seen it was a typo), unless its source lies under one of
        ``may_be_absent``: key prefixes the caller knows the model may lack (the classifier of a
        feature extractor, ``num_classes=0``).
        """
        error = MappingError(self.path, source_name=source_name)
        assignments: dict[str, tuple[str, Rule]] = {}
        claimed_by: dict[str, list[str]] = {}
        matched: set[int] = set()
        for key, shape in source_shapes.items():
            renamed = self.rename_key(key)
            hits = [(rule, rule.target_for(renamed)) for rule in self.rules]
            hits = [(rule, target) for rule, target in hits if target is not None]
            matched.update(id(rule) for rule, _ in hits)
            if len(hits) > 1:
                error.multiply_matched[key] = [rule.describe() for rule, _ in hits]
                continue
            if not hits:
                if not any(drop.regex.match(renamed) for drop in self.drops):
                    error.unused_sources[key] = tuple(shape)
                continue
            rule, target = hits[0]
            if target not in target_shapes:
                near = difflib.get_close_matches(target, list(target_shapes), n=3, cutoff=0.6)
                error.unknown_targets.setdefault(self.rule_at(rule), (
                    f"{target!r} (for {key}) is no Keras variable"
                    + (f"; nearest: {', '.join(near)}" if near else "")))
                continue
            claimed_by.setdefault(target, []).append(key)
            transformed = _transformed_shape(tuple(shape), rule.transform)
            if transformed != tuple(target_shapes[target]):
                error.shape_mismatches.append(ShapeMismatch(
                    rule.describe(), key, target, tuple(shape), transformed, tuple(target_shapes[target])))
            assignments[target] = (key, rule)
        error.unmatched_rules = [
            self.rule_at(rule) for rule in self.rules
            if id(rule) not in matched and not any(rule.source == p or rule.source.startswith(p + ".")
                                                   for p in may_be_absent)]
        for target, keys in claimed_by.items():
            if len(keys) > 1:
                error.assigned_twice[target] = keys
        for target, shape in target_shapes.items():
            if target not in claimed_by and target not in keep_unassigned:
                error.unassigned_targets[target] = tuple(shape)
        if error:
            raise error
        return assignments

    def accounts_for(self, key: str) -> bool:
        """Whether a rule or a drop takes ``key`` (checkpoint layout): how well a checkpoint fits."""
        renamed = self.rename_key(key)
        return any(rule.source_regex.match(renamed) for rule in self.rules) \
            or any(drop.regex.match(renamed) for drop in self.drops)

    def forward(self, state_dict: MappingABC[str, Any], target_shapes: MappingABC[str, tuple],
                keep_unassigned: tuple[str, ...] = (), source_name: str = "checkpoint",
                may_be_absent: tuple[str, ...] = ()):
        """Yield ``(target path, array in Keras layout)`` once the whole plan has been checked.

        A generator, so a caller can assign and release one tensor at a time.
        """
        shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
        plan = self.plan(shapes, target_shapes, keep_unassigned, source_name, may_be_absent)
        for target, (key, rule) in plan.items():
            yield target, get_transform(rule.transform).forward(np.asarray(state_dict[key]))

    # -- backward ----------------------------------------------------------------------------
    def backward(self, keras_weights: MappingABC[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Keras weights back to the source's key layout, strict in the same way.

        Keys are produced in their renamed form (the canonical layout, e.g. timm's). Lazy
        weights (``LazyArray``) give lazy results, so a 1.4 GB model is written tensor by tensor.
        """
        error = MappingError(self.path, source_name="Keras weights")
        out: dict[str, np.ndarray] = {}
        for path, value in keras_weights.items():
            hits = [(rule, rule.source_for(path)) for rule in self.rules]
            hits = [(rule, key) for rule, key in hits if key is not None]
            if len(hits) != 1:
                if hits:
                    error.multiply_matched[path] = [rule.describe() for rule, _ in hits]
                else:
                    error.unassigned_targets[path] = tuple(np.shape(value))
                continue
            rule, key = hits[0]
            if key in out:
                error.assigned_twice[key] = [path]
            inverse = get_transform(rule.transform).inverse
            if isinstance(value, LazyArray):  # stays lazy: a streaming writer reads one tensor at a time
                out[key] = LazyArray(_transformed_shape(value.shape, rule.transform, inverse=True), value.dtype,
                                     lambda v=value, f=inverse: np.ascontiguousarray(f(np.asarray(v))))
            else:
                out[key] = np.ascontiguousarray(inverse(np.asarray(value)))
        if error:
            raise error
        for drop in self.drops:
            if drop.restore is None:
                continue
            for key in list(out):
                match = drop.restore.beside_regex.match(key)
                if match:
                    out[drop.pattern.format(**match.groupdict())] = drop.restore.array()
        return out

    def dropped(self, keys) -> dict[str, str]:
        """{key: reason} for the keys (canonical layout) this mapping deliberately leaves out."""
        result = {}
        for key in keys:
            renamed = self.rename_key(key)
            drop = next((d for d in self.drops if d.regex.match(renamed)), None)
            if drop is not None:
                result[key] = drop.reason.strip()
        return result

    def rules_feeding(self, target_paths: list[str]) -> list[Rule]:
        """The rules that assign any of ``target_paths`` (to localise a parity failure)."""
        return [rule for rule in self.rules if any(rule.target_regex.match(p) for p in target_paths)]


def _transformed_shape(shape: tuple, transform: str, inverse: bool = False) -> tuple:
    probe = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=shape, strides=(0,) * len(shape))
    fn = get_transform(transform).inverse if inverse else get_transform(transform).forward
    return tuple(fn(probe).shape)


class RenameError(ValueError):
    """A checkpoint whose keys a rename file cannot carry into the canonical layout."""


@dataclass
class RenameSpec(_Renames):
    """A declarative key-layout change (a family's ``<family>_<layout>.yaml`` with only ``rename``):
    regex substitutions applied in order to every key of a checkpoint in another layout.

    Strict like the mappings: a key that no substitution changes, or two keys that end up with
    one name, stop the rename with an error naming them.
    """

    path: str
    family: str
    source: str
    renames: list[Rename]

    @classmethod
    def load(cls, path: str | Path | Traversable) -> RenameSpec:
        path = Path(path) if isinstance(path, str) else path
        data = read_yaml(path, "rename file")
        if not isinstance(data, dict) or not data.get("rename"):
            raise MappingFileError(path, 1, "a rename file is a YAML mapping with 'family' and a non-empty 'rename'")
        if not isinstance(data["rename"], list):
            raise MappingFileError(path, data.get("__line__"), "'rename' must be a list")
        unknown = set(data) - {"family", "source", "description", "rename", "__line__"}
        if unknown:
            raise MappingFileError(path, data.get("__line__"), f"unknown top-level keys {sorted(unknown, key=str)}; "
                                   "a rename file has family, source, description and rename")
        renames = [MappingSpec._rename(entry, path) for entry in data["rename"]]
        return cls(str(path), str(data.get("family", "")), str(data.get("source", "")), renames)

    def apply(self, state: MappingABC[str, Any]) -> dict[str, Any]:
        """``state`` with every key renamed (values untouched, order kept)."""
        out: dict[str, Any] = {}
        origin: dict[str, str] = {}
        unchanged, collisions = [], []
        for key, value in state.items():
            new = self.rename_key(key)
            if new == key:
                unchanged.append(key)
            if new in origin:
                collisions.append(f"{origin[new]} and {key} -> {new}")
            origin[new] = key
            out[new] = value
        if unchanged or collisions:
            lines = [f"{self.path} cannot rename the checkpoint ({self.source}):"]
            if unchanged:
                lines.append(f"  keys no rename applies to ({len(unchanged)}): " + ", ".join(unchanged[:10])
                             + (" ..." if len(unchanged) > 10 else ""))
            if collisions:
                lines.append(f"  keys renamed to one name ({len(collisions)}): " + "; ".join(collisions[:10]))
            raise RenameError("\n".join(lines))
        return out


def family_mapping(family: Family, override: str | None = None, config: Any = None) -> MappingSpec:
    """A family's mapping (its package data), or the file a user passed to replace it (``--mapping
    FILE``); given a ``config``, only the rules that exist for it (``when:``)."""
    mapping = MappingSpec.load(override or family.resource(family.mapping))
    return mapping if config is None else mapping.for_config(config)


def family_renames(family: Family, layout: Layout) -> RenameSpec:
    """The rename file that carries ``layout``'s keys into the family's canonical layout."""
    return RenameSpec.load(family.resource(layout.renames))
