"""Which layers a method touches, and with which settings: one ordered list of rules (NNI's
`config_list` is the model).

    layers:                                 # conf/method/<name>.yaml, key `layers`
      - {type: [conv, linear], quantize: true, bits: {w: 2, a: 2}}
      - {name: first, quantize: false}      # the first Conv2d/Linear stays float
      - {name: last, quantize: false}       # so does the classifier
      - {name: "layer3.*", bits: {w: 4}}    # later rules override earlier ones, key by key

A rule matches layers by `name` (fnmatch patterns over `model.named_modules()` names, plus the
tokens `first` / `last`: the first / last candidate in registration order) AND/OR by `type`
(conv, linear (alias fc), pointwise: 1x1 conv with groups=1, depthwise: groups = C_in > 1, or
a torch.nn class name such as Conv2d, matched along the class's MRO); a list means any of them.
Settings: `quantize` (false: the layer stays float and every method leaves it untouched), `bits`
{w, a, g} (each 1..32; merged key by key), `sparsity` (0..1), `rank` (an int >= 1, or an energy
/ parameter fraction in (0, 1]), plus the extra keys a method declares (`parse(extra=...)`).

`plan(model, rules)` -> {layer name: settings} for every candidate (exact nn.Conv2d / nn.Linear
by default) that at least one rule matches, in registration order; `quantize` defaults to true.
Every name pattern must match a candidate (a typo is a ConfigError naming the key); a rule
selected by type alone may match nothing (a `type: linear` rule on an all-conv net is harmless).

Every method that chooses layers takes such a list as its `layers` argument (its YAML shows the
default, e.g. the quantization methods' first/last full-precision rules) and uses it as

    p = plan(model, self.rules)     # {"layer1.0.conv1": {"quantize": True, "bits": {...}}, ...}
    for name in selected(p): ...    # the layers it touches, with p[name]'s settings

The older per-kind maps (`{conv: 8, fc: 5}` bits of weight sharing, PQ's block sizes) and
pruning's per-layer sparsities (a number, a list, a {name: value} map) are rules too
(`from_kind_map`, `from_per_layer`), placed before the `layers` rules so that those override them.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from torch import nn

from .errors import ConfigError

TOKENS = ("first", "last")
TYPES = ("conv", "linear", "fc", "pointwise", "depthwise")
SETTINGS = ("quantize", "bits", "sparsity", "rank")
ROLES = ("w", "a", "g")

ALL = [{"name": "*", "quantize": True}]  # every candidate layer
# the quantization methods' default: every Conv2d/Linear but the first conv and the classifier
DEFAULT_QUANT_RULES = [{"type": ["conv", "linear"], "quantize": True},
                       {"name": "first", "quantize": False},
                       {"name": "last", "quantize": False}]


@dataclass(frozen=True)
class Rule:
    """One parsed rule; `where` is the key path of its name patterns (method.layers[2].name),
    for the error when a pattern matches no layer."""
    names: tuple[str, ...] | None
    types: tuple[str, ...] | None
    settings: dict = field(default_factory=dict)
    where: str = "method.layers"


def candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every exact nn.Conv2d / nn.Linear, in registration order."""
    return [(n, m) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


def is_type(m: nn.Module, t: str) -> bool:
    conv = isinstance(m, nn.Conv2d)
    if t == "conv":
        return conv
    if t in ("linear", "fc"):
        return isinstance(m, nn.Linear)
    if t == "pointwise":
        return conv and tuple(m.kernel_size) == (1, 1) and m.groups == 1
    if t == "depthwise":
        return conv and m.groups > 1 and m.groups == m.in_channels
    return any(c.__name__ == t for c in type(m).__mro__)


def _strings(v, key: str) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, Sequence) or not items or not all(isinstance(s, str) for s in items):
        raise ConfigError(f"{key}={v}: must be a string or a non-empty list of strings")
    return tuple(items)


def _check(key: str, v) -> None:
    """Validate one setting's value (extra keys are the method's to check)."""
    if key == "quantize" and not isinstance(v, bool):
        raise ConfigError(f"{key}={v}: must be true or false")
    if key == "bits":
        if not isinstance(v, Mapping) or not v or set(v) - set(ROLES):
            raise ConfigError(f"{key}={v}: must be a mapping of w, a, g to integers in 1..32")
        for r, b in v.items():
            if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32:
                raise ConfigError(f"{key}.{r}={b}: must be an integer in 1..32")
    if key == "sparsity" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
        raise ConfigError(f"{key}={v}: must be a number in [0, 1]")
    if key == "rank":
        ok = not isinstance(v, bool) and ((isinstance(v, int) and v >= 1)
                                          or (isinstance(v, float) and 0 < v <= 1))
        if not ok:
            raise ConfigError(f"{key}={v}: must be an integer >= 1 (the rank) or a fraction in (0, 1]")


def parse(rules: Iterable[Mapping], key: str = "method.layers", extra: Iterable[str] = ()) -> list[Rule]:
    """Validated rules; ConfigError (one line, naming key[i].field) for an unknown key, a type
    that is not one, bits outside 1..32, sparsity outside [0, 1], a bad rank."""
    if isinstance(rules, (str, Mapping)) or not isinstance(rules, Iterable):
        raise ConfigError(f"{key}={rules}: must be a list of rules ({{name: ..., type: ..., <settings>}})")
    valid = ("name", "type", *SETTINGS, *extra)
    out = []
    for i, rule in enumerate(rules):
        where = f"{key}[{i}]"
        if not isinstance(rule, Mapping):
            raise ConfigError(f"{where}={rule}: must be a mapping (name, type, settings)")
        for k in rule:
            if k not in valid:
                raise ConfigError(f"{where}.{k}: unknown key; valid: {', '.join(valid)}")
        names = _strings(rule["name"], f"{where}.name") if "name" in rule else None
        types = _strings(rule["type"], f"{where}.type") if "type" in rule else None
        for t in types or ():
            cls = getattr(nn, t, None)
            if t not in TYPES and not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise ConfigError(f"{where}.type={t}: valid: {', '.join(TYPES)} or a torch.nn class name")
        settings = {k: (dict(v) if k == "bits" and isinstance(v, Mapping) else v)
                    for k, v in rule.items() if k not in ("name", "type")}
        for k, v in settings.items():
            try:
                _check(k, v)
            except ConfigError as e:
                raise ConfigError(f"{where}.{e}") from None
        out.append(Rule(names, types, settings, f"{where}.name"))
    return out


def _typed(rule: Rule, m: nn.Module) -> bool:
    return rule.types is None or any(is_type(m, t) for t in rule.types)


def _named(pattern: str, name: str, ends: tuple[str, str]) -> bool:
    if pattern in TOKENS:
        return name == ends[TOKENS.index(pattern)]
    return fnmatch.fnmatchcase(name, pattern)


def _matches(rule: Rule, name: str, m: nn.Module, ends: tuple[str, str]) -> bool:
    return _typed(rule, m) and (rule.names is None or any(_named(p, name, ends) for p in rule.names))


def plan(model: nn.Module, rules: Iterable[Rule | Mapping], layers: Sequence | None = None,
         key: str = "method.layers") -> dict[str, dict]:
    """{layer name: merged settings} of the candidate `layers` ((name, module) pairs; default:
    `candidates(model)`) that a rule matches; later rules override earlier ones key by key (bits
    role by role). Plain dicts among `rules` are parsed first (errors name `key`)."""
    rules = [r if isinstance(r, Rule) else parse([r], key)[0] for r in rules]
    layers = candidates(model) if layers is None else list(layers)
    ends = (layers[0][0], layers[-1][0]) if layers else ("", "")
    for r in rules:
        typed = [n for n, m in layers if _typed(r, m)]
        for p in r.names or ():
            if not any(_named(p, n, ends) for n in typed):
                shown = ", ".join(typed[:8]) + (", ..." if len(typed) > 8 else "")
                raise ConfigError(f"{r.where}={p}: matches no {'/'.join(r.types or ['Conv2d/Linear'])} "
                                  f"layer; valid names: first, last, {shown}")
    out: dict[str, dict] = {}
    for name, m in layers:
        for r in rules:
            if _matches(r, name, m, ends):
                s = out.setdefault(name, {"quantize": True})
                for k, v in r.settings.items():
                    s[k] = {**s.get(k, {}), **v} if k == "bits" else v
    return out


def selected(p: Mapping[str, Mapping]) -> list[str]:
    """The layers of a plan that the method touches (quantize is not false), in order."""
    return [n for n, s in p.items() if s.get("quantize", True)]


def choose(model: nn.Module, rules: Iterable[Rule | Mapping], key: str = "method.layers"
           ) -> dict[str, dict]:
    """{name: settings} of the layers the rules select (quantize not false), in order."""
    p = plan(model, rules, key=key)
    return {n: p[n] for n in selected(p)}


# --- maps of per-layer settings as rules --------------------------------------------------------

def _flat(tree: Mapping, prefix: str = "") -> dict:
    """{classifier: {1: 8}} -> {"classifier.1": 8} (a dotted override nests the layer name)."""
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def _setting(setting: str, v) -> dict:
    """"bits.w", 5 -> {"bits": {"w": 5}}; "block_size", 4 -> {"block_size": 4}."""
    head, _, role = setting.partition(".")
    return {head: {role: v}} if role else {head: v}


def from_kind_map(value: Mapping, setting: str, key: str) -> list[Rule]:
    """`{conv: x, fc: y, <layer name>: z}` (share/deep_compression bits and index_bits,
    product_quant block_size) -> `setting` per layer: names override the kinds. `setting` may
    name a role of bits ("bits.w")."""
    flat = _flat(value)
    if any(k not in flat for k in ("conv", "fc")):
        raise ConfigError(f"{key}={flat}: needs the keys conv and fc")
    extra = () if setting.partition(".")[0] in SETTINGS else (setting,)
    rules = [{"type": k, **_setting(setting, flat[k])} for k in ("conv", "fc")]
    named = [{"name": n, **_setting(setting, v)} for n, v in flat.items() if n not in ("conv", "fc")]
    return parse(rules, key, extra) + [replace(r, where=key) for r in parse(named, key, extra)]


def from_per_layer(value, names: Sequence[str], setting: str = "sparsity", key: str = "method.sparsity",
                   lo: float = 0.0, hi: float = 1.0) -> list[Rule]:
    """prune's `number | [one per layer, in order] | {name: v, default: v}` over the layers
    `names` (those the method touches) -> one rule per layer giving `setting` as a float."""
    names = list(names)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names) - {"default"})
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: not a pruned layer; valid: default, {', '.join(names)}")
        if "default" not in value and set(value) != set(names):
            raise ConfigError(f"{key}={dict(value)}: give every layer ({', '.join(names)}) or a default")
        values = {n: value.get(n, value.get("default")) for n in names}
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != len(names):
            raise ConfigError(f"{key}={list(value)}: needs {len(names)} values, one per layer "
                              f"({', '.join(names)})")
        values = dict(zip(names, value))
    else:
        values = {n: value for n in names}
    for n, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise ConfigError(f"{key}={v} (layer {n}): must be a number in [{lo}, {hi}]")
    extra = () if setting in SETTINGS else (setting,)
    return [replace(r, where=key) for r in parse([{"name": n, setting: float(v)} for n, v in values.items()],
                                                   key, extra)]
