#!/usr/bin/env python3
"""Generate `search_params.json` from the official FHIR R4 definitions.

Input: the unpacked npm package `hl7.fhir.r4.examples@4.0.1` (its `package/`
directory), which holds
  * `Bundle-searchParams.json`        -- the 1375 core SearchParameters,
  * `StructureDefinition-*.json`      -- resource and datatype definitions,
  * `CompartmentDefinition-patient.json`.

Output (compact JSON):
  {
    "version": "4.0.1",
    "params": { "<ResourceType>": [SearchParam, ...], "Resource": [common params] },
    "patient_compartment": { "<ResourceType>": ["subject", "performer", ...] }
  }

Each SearchParam is
  {"name": code, "type": token|string|date|reference|quantity|number|uri|composite|special,
   "paths": [ElementPath...],           # where the values live, per base type
   "targets": [...],                    # reference params only
   "components": [{"param","type","paths"}...],   # composite only; paths relative to each root
   "unsupported": "reason"}             # present when the expression could not be simplified

and ElementPath is
  {"steps": ["component", "valueQuantity"],   # JSON property names, arrays flattened
   "kind": "Quantity",                         # FHIR datatype of the leaf
   "where": {"at": 0, "field": "system", "value": "email"},   # optional element filter
   "target": "Patient"}                        # optional `.where(resolve() is X)`

The FHIRPath subset simplified here (anything else => "unsupported", never guessed):
  * `A | B`                         unions (split at top level)
  * `X.y.z`                          member navigation (arrays are flattened)
  * `(X as T)`, `X.as(T)`            choice-type casts -> `valueQuantity` etc.
  * `X.choice` without a cast        expanded to every concrete type that suits the param type
  * `.where(resolve() is T)`         reference target-type filter
  * `.where(field='literal')`        equality filter on a child primitive
Usage: gen_search_params.py <package-dir> <out.json>
"""

import json
import os
import re
import sys

# Leaf datatypes each search-parameter type can index.  Paths whose leaf type
# is not listed are dropped (and the parameter is unsupported when none remain).
COMPATIBLE = {
    "token": {"code", "Coding", "CodeableConcept", "Identifier", "ContactPoint",
              "boolean", "string", "id", "uri", "url", "canonical", "oid", "uuid"},
    "string": {"string", "markdown", "HumanName", "Address", "code", "id", "uri", "url"},
    "date": {"date", "dateTime", "instant", "Period", "Timing"},
    "reference": {"Reference", "canonical", "uri", "url"},
    "quantity": {"Quantity", "Age", "Duration", "Money", "SimpleQuantity", "Count",
                 "Distance", "MoneyQuantity"},
    "number": {"decimal", "integer", "positiveInt", "unsignedInt"},
    "uri": {"uri", "url", "canonical", "oid", "uuid", "id"},
}

FHIRPATH_STRING = "http://hl7.org/fhirpath/System.String"


# Paths skipped because their datatype cannot be indexed by the parameter type
# (e.g. `Procedure.performedString` for a date parameter); reported on stderr.
DROPPED = []


class Unsupported(Exception):
    """Raised when an expression uses FHIRPath beyond the simplified subset."""


class Model:
    """Element definitions of the base (non-profile) StructureDefinitions."""

    def __init__(self, package_dir):
        self.elements = {}       # "Observation.value[x]" -> element definition
        self.kinds = {}          # type name -> "resource" | "complex-type" | ...
        for name in os.listdir(package_dir):
            if not name.startswith("StructureDefinition-"):
                continue
            with open(os.path.join(package_dir, name), encoding="utf-8") as f:
                sd = json.load(f)
            if sd.get("derivation") == "constraint" and sd.get("type") != sd.get("id"):
                continue  # profiles
            if sd.get("kind") == "logical":
                continue
            self.kinds[sd["type"]] = sd["kind"]
            for el in sd.get("snapshot", {}).get("element", []):
                self.elements[el["path"]] = el
        self.resource_types = sorted(
            t for t, k in self.kinds.items()
            if k == "resource" and t not in ("Resource", "DomainResource"))

    @staticmethod
    def type_codes(el):
        codes = []
        for t in el.get("type", []):
            code = t["code"]
            codes.append("id" if code == FHIRPATH_STRING else code)
        return codes

    def has_children(self, path):
        prefix = path + "."
        return any(p.startswith(prefix) for p in self.elements)

    def child(self, context, name):
        """Resolve member `name` under `context` (an element path prefix).

        Returns (element_path, element_definition, is_choice)."""
        path = f"{context}.{name}"
        el = self.elements.get(path)
        if el is not None:
            return path, el, False
        el = self.elements.get(path + "[x]")
        if el is not None:
            return path + "[x]", el, True
        raise Unsupported(f"unknown element {path}")

    def descend(self, path, el, type_code):
        """The context in which children of an element of `type_code` are looked up."""
        if "contentReference" in el:
            return el["contentReference"].lstrip("#")
        if type_code in ("BackboneElement", "Element") and self.has_children(path):
            return path
        if type_code in self.kinds:
            return type_code
        raise Unsupported(f"cannot descend into {path} ({type_code})")


# ---------------------------------------------------------------------------
# Expression parsing


def split_union(expr):
    """Split at top-level `|` (outside parentheses and quotes)."""
    parts, depth, quote, start = [], 0, False, 0
    for i, ch in enumerate(expr):
        if ch == "'":
            quote = not quote
        elif quote:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expr[start:i].strip())
            start = i + 1
    parts.append(expr[start:].strip())
    return [p for p in parts if p]


TOKEN_RE = re.compile(r"""
    \.as\((?P<as_fn>\w+)\)
  | \.where\(resolve\(\)\s+is\s+(?P<res>\w+)\)
  | \.where\((?P<wf>\w+)\s*=\s*'(?P<wv>[^']*)'\)
  | \.(?P<member>\w+)
""", re.X)


def tokenize(part):
    """Turn one union member into a root name and a list of operations.

    Operations: ("member", name) | ("cast", Type) | ("target", Type) | ("where", field, value).
    """
    m = re.fullmatch(r"\(\s*(.+?)\s+as\s+(\w+)\s*\)(.*)", part)
    if m:  # `(X as T).rest` == `X.as(T).rest`
        part = f"{m.group(1)}.as({m.group(2)}){m.group(3)}"
    m = re.match(r"%?\w+", part)
    if not m:
        raise Unsupported(f"cannot parse {part!r}")
    root, pos, ops = m.group(0), m.end(), []
    while pos < len(part):
        t = TOKEN_RE.match(part, pos)
        if not t:
            raise Unsupported(f"FHIRPath beyond the supported subset: {part[pos:]!r}")
        if t.group("as_fn"):
            ops.append(("cast", t.group("as_fn")))
        elif t.group("res"):
            ops.append(("target", t.group("res")))
        elif t.group("wf"):
            ops.append(("where", t.group("wf"), t.group("wv")))
        else:
            ops.append(("member", t.group("member")))
        pos = t.end()
    return root, ops


def cast_name(types, wanted):
    """Match a cast target case-insensitively against a choice's types (`DateTime` -> `dateTime`)."""
    for t in types:
        if t.lower() == wanted.lower():
            return t
    return None


def resolve(model, context, ops, param_type):
    """Walk `ops` from element context `context`; return a list of ElementPath dicts."""
    # State: (steps, context_path, element_path, element_def, leaf_types, where, target, pending_choice)
    states = [dict(steps=[], ctx=context, el=None, path=context, types=[context],
                   where=None, target=None, choice=None)]
    for i, op in enumerate(ops):
        new_states = []
        for st in states:
            if op[0] == "member":
                if st["choice"] is not None:
                    # uncast choice followed by navigation: expand every type
                    expanded = expand_choice(st, None)
                else:
                    expanded = [st]
                for s in expanded:
                    ctx = s["ctx"] if s["el"] is None else model.descend(s["path"], s["el"], s["types"][0])
                    path, el, is_choice = model.child(ctx, op[1])
                    types = model.type_codes(el)
                    if "contentReference" in el:
                        types = ["BackboneElement"]
                    ns = dict(s, path=path, el=el, types=types, ctx=ctx)
                    if is_choice:
                        ns["choice"] = op[1]
                    else:
                        ns["steps"] = s["steps"] + [op[1]]
                        ns["choice"] = None
                    new_states.append(ns)
            elif op[0] == "cast":
                if st["choice"] is not None:
                    t = cast_name(st["types"], op[1])
                    if t is None:
                        continue  # cast to a type the choice does not allow: empty
                    new_states.extend(expand_choice(st, [t]))
                else:
                    t = cast_name(st["types"], op[1])
                    if t is None:
                        raise Unsupported(f"cast of non-choice {st['path']} to {op[1]}")
                    new_states.append(dict(st, types=[t]))
            elif op[0] == "target":
                if st["choice"] is not None:
                    st = expand_choice(st, ["Reference"])[0]
                if st["types"] != ["Reference"]:
                    raise Unsupported("resolve() on a non-Reference")
                new_states.append(dict(st, target=op[1]))
            elif op[0] == "where":
                if st["where"] is not None or st["choice"] is not None:
                    raise Unsupported("nested where()")
                if not st["steps"]:
                    raise Unsupported("where() on the resource root")
                new_states.append(dict(st, where={"at": len(st["steps"]) - 1,
                                                  "field": op[1], "value": op[2]}))
        states = new_states
    out = []
    for st in states:
        for s in (expand_choice(st, None) if st["choice"] is not None else [st]):
            if len(s["types"]) != 1:
                raise Unsupported(f"ambiguous type at {s['path']}")
            kind = s["types"][0]
            if param_type in COMPATIBLE and kind not in COMPATIBLE[param_type]:
                DROPPED.append(f"{s['path']} as {kind} for a {param_type} parameter")
                continue
            p = {"steps": s["steps"], "kind": kind}
            if s["where"]:
                p["where"] = s["where"]
            if s["target"]:
                p["target"] = s["target"]
            out.append(p)
    return out


def expand_choice(st, only):
    """Replace a pending choice element `value[x]` with concrete `valueQuantity` etc."""
    res = []
    for t in st["types"]:
        if only is not None and t not in only:
            continue
        name = st["choice"] + t[0].upper() + t[1:]
        res.append(dict(st, steps=st["steps"] + [name], types=[t], choice=None))
    return res


def paths_for_base(model, expression, base, param_type):
    """ElementPaths of `expression` that apply to resource type `base`."""
    paths = []
    for part in split_union(expression):
        root, ops = tokenize(part)
        if root[0].islower():
            # A few R4 expressions omit the root (`name | alias` on InsurancePlan);
            # FHIRPath evaluates them against the resource itself.
            _, ops = tokenize("This." + part)
            root = base
        if root != base:
            continue
        paths.extend(resolve(model, base, ops, param_type))
    return unique_paths(paths)


def unique_paths(paths):
    """The paths without repeats, in first-seen order."""
    seen, unique = set(), []
    for p in paths:
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def element_context(model, base, steps):
    """Element-definition context for children of the element at `steps` (no casts)."""
    ctx, path, el = base, base, None
    for name in steps:
        if el is not None:
            ctx = model.descend(path, el, model.type_codes(el)[0])
        path, el, is_choice = model.child(ctx, name)
        if is_choice:
            raise Unsupported(f"composite root {path} is a choice element")
        if "contentReference" in el:
            el = dict(el, type=[{"code": "BackboneElement"}])
    if el is None:
        return base
    return model.descend(path, el, model.type_codes(el)[0])


def component_paths(model, root_contexts, expression, param_type):
    """Paths of a composite component, relative to each root instance (union)."""
    paths = []
    for ctx in root_contexts:
        for part in split_union(expression):
            if part.startswith("%"):
                raise Unsupported("%resource in a composite component")
            m = re.fullmatch(r"\(\s*(.+?)\s+as\s+(\w+)\s*\)(.*)", part)
            if m:
                part = f"{m.group(1)}.as({m.group(2)}){m.group(3)}"
            _, ops = tokenize("This." + part)
            paths.extend(resolve(model, ctx, ops, param_type))
    return unique_paths(paths)


def build(package_dir):
    model = Model(package_dir)
    with open(os.path.join(package_dir, "Bundle-searchParams.json"), encoding="utf-8") as f:
        bundle = json.load(f)
    sps = [e["resource"] for e in bundle["entry"]]
    by_url = {sp["url"]: sp for sp in sps}

    params = {}
    stats = {"supported": 0, "unsupported": 0}
    unsupported_list = []
    for sp in sps:
        for base in sp["base"]:
            entry = {"name": sp["code"], "type": sp["type"]}
            if sp.get("target"):
                targets = sorted(sp["target"])
                # "Any resource" targets (145 names) are written as ["*"] to keep
                # the file small; the loader expands the wildcard.
                if len(targets) >= len(model.resource_types) - 1 and \
                        set(targets) <= set(model.resource_types):
                    targets = ["*"]
                entry["targets"] = targets
            try:
                expression = sp.get("expression")
                if not expression:
                    raise Unsupported("no FHIRPath expression")
                if sp["type"] == "special":
                    raise Unsupported("special parameter")
                ctx_base = base
                if base in ("Resource", "DomainResource"):
                    expression = expression.replace("DomainResource.", "Resource.")
                    ctx_base = "Resource"
                if sp["type"] == "composite":
                    roots = []
                    for part in split_union(expression):
                        root, ops = tokenize(part)
                        if root != base:
                            continue
                        if any(op[0] != "member" for op in ops):
                            raise Unsupported("composite root with casts/filters")
                        roots.append([op[1] for op in ops])
                    if not roots:
                        raise Unsupported("composite root not found")
                    contexts = [element_context(model, base, r) for r in roots]
                    entry["paths"] = [{"steps": r, "kind": "BackboneElement" if r else base}
                                      for r in roots]
                    comps = []
                    for comp in sp["component"]:
                        ref = by_url.get(comp["definition"])
                        if ref is None:
                            raise Unsupported(f"unknown component {comp['definition']}")
                        cpaths = component_paths(model, contexts, comp["expression"], ref["type"])
                        if not cpaths:
                            raise Unsupported(f"component {ref['code']} has no indexable path")
                        comps.append({"param": ref["code"], "type": ref["type"], "paths": cpaths})
                    entry["components"] = comps
                else:
                    entry["paths"] = paths_for_base(model, expression, ctx_base, sp["type"])
                    if not entry["paths"]:
                        raise Unsupported("no path with an indexable datatype")
                stats["supported"] += 1
            except Unsupported as e:
                entry.pop("paths", None)
                entry.pop("components", None)
                entry["unsupported"] = str(e)
                stats["unsupported"] += 1
                unsupported_list.append((base, sp["code"], str(e)))
            key = "Resource" if base in ("Resource", "DomainResource") else base
            params.setdefault(key, []).append(entry)

    for key in params:
        params[key].sort(key=lambda p: p["name"])

    with open(os.path.join(package_dir, "CompartmentDefinition-patient.json"), encoding="utf-8") as f:
        compartment = json.load(f)
    patient_compartment = {r["code"]: r["param"] for r in compartment["resource"] if r.get("param")}

    out = {"version": "4.0.1", "resource_types": model.resource_types,
           "params": params, "patient_compartment": patient_compartment}
    return out, stats, unsupported_list


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out, stats, unsupported = build(sys.argv[1])
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"), sort_keys=False)
        f.write("\n")
    print(f"{stats['supported']} (base, param) pairs supported, "
          f"{stats['unsupported']} unsupported", file=sys.stderr)
    for base, code, reason in unsupported:
        print(f"  unsupported {base}.{code}: {reason}", file=sys.stderr)
    print(f"{len(set(DROPPED))} element paths skipped (datatype not indexable by the "
          "parameter type):", file=sys.stderr)
    for d in sorted(set(DROPPED)):
        print(f"  skipped {d}", file=sys.stderr)


if __name__ == "__main__":
    main()
