#!/usr/bin/env python3
"""Generate r4_model.json, the compact FHIR R4 table that validation.rs reads.

Usage:
    python3 gen_r4_model.py PACKAGE_DIR [OUTPUT]      (OUTPUT defaults to r4_model.json)

PACKAGE_DIR is an unpacked FHIR R4 (4.0.1) npm package, i.e. the folder holding
package.json, StructureDefinition-*.json, ValueSet-*.json and CodeSystem-*.json.
The official core package `hl7.fhir.r4.core` is published on the FHIR package
registry, not on registry.npmjs.org; the HL7 package `hl7.fhir.r4.examples@4.0.1`
(which is on npmjs.org) ships the very same conformance resources of the 4.0.1
build as individual files, so either works:

    npm pack hl7.fhir.r4.examples@4.0.1 && tar xzf hl7.fhir.r4.examples-4.0.1.tgz
    python3 gen_r4_model.py package r4_model.json

What the table holds (all dict keys sorted, so the output is stable):
  * "types": every complex type and resource reachable from the roots below,
    with one entry per snapshot element path: min, max, type codes (choice
    elements `x[x]` list all their allowed types), contentReference targets,
    Reference target type names and the ValueSet of a *required* binding.
  * "primitives": for each primitive type, its JSON kind (string, boolean,
    number, integer) and the regex of its `value` element.
  * "resourceTypes": the names of all R4 resource types (to recognise literal
    references such as "Patient/123" and the resourceType of contained resources).
  * "valueSets": each required ValueSet expanded to {system: [codes]} from the
    package's own CodeSystems, or {"unexpandable": reason} when it cannot be
    expanded from the package (external systems such as UCUM, BCP-47, MIME
    types, ISO 4217; filters; incomplete code systems).

Standard library only.
"""

import json
import os
import sys

ROOT_TYPES = ["Resource", "DomainResource", "Patient", "Observation", "Consent", "Element"]
STRICT_RESOURCES = ["Consent", "Observation", "Patient"]

FHIRPATH_SYSTEM = "http://hl7.org/fhirpath/System."
EXT_FHIR_TYPE = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
EXT_REGEX = "http://hl7.org/fhir/StructureDefinition/regex"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"

# FHIRPath system types without a structuredefinition-fhir-type extension.
SYSTEM_TYPE_FALLBACK = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}

# JSON kind of a primitive `value` element, by its FHIRPath system type.
JSON_KIND_BY_SYSTEM_TYPE = {"Boolean": "boolean", "Integer": "integer", "Decimal": "number"}


class Unexpandable(Exception):
    """A ValueSet that cannot be expanded from the package alone."""


def load_json(path):
    with open(path, encoding="utf-8-sig") as handle:
        return json.load(handle)


def strip_version(canonical):
    return canonical.split("|", 1)[0]


def extension_value(holder, url):
    for ext in holder.get("extension", []):
        if ext.get("url") == url:
            for key, value in ext.items():
                if key.startswith("value"):
                    return value
    return None


class Package:
    """Index of the conformance resources in an unpacked package folder."""

    def __init__(self, folder):
        self.folder = folder
        self.manifest = load_json(os.path.join(folder, "package.json"))
        self.structure_definitions = {}  # id -> SD (core types and resources only)
        self.value_sets = {}  # canonical url -> ValueSet
        self.code_systems = {}  # canonical url -> CodeSystem
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".json"):
                continue
            if name.startswith("StructureDefinition-"):
                sd = load_json(os.path.join(folder, name))
                if sd.get("url") == SD_PREFIX + sd.get("id", ""):
                    self.structure_definitions[sd["id"]] = sd
            elif name.startswith("ValueSet-"):
                vs = load_json(os.path.join(folder, name))
                self.value_sets[vs["url"]] = vs
            elif name.startswith("CodeSystem-"):
                cs = load_json(os.path.join(folder, name))
                self.code_systems[cs["url"]] = cs

    def type_sd(self, name):
        sd = self.structure_definitions.get(name)
        if sd is None or sd.get("kind") not in ("primitive-type", "complex-type", "resource"):
            raise KeyError(f"no type StructureDefinition for {name!r}")
        return sd


def element_type_codes(package, sd_id, element):
    """The type names of one element, resolving FHIRPath system types and core profiles."""
    codes = []
    for type_ref in element.get("type", []):
        code = type_ref["code"]
        if code.startswith(FHIRPATH_SYSTEM):
            system_name = code[len(FHIRPATH_SYSTEM):]
            code = extension_value(type_ref, EXT_FHIR_TYPE) or SYSTEM_TYPE_FALLBACK[system_name]
        # A core constraint on a datatype (Quantity + SimpleQuantity profile) is
        # validated against that constraint's own snapshot.
        for profile in type_ref.get("profile", []):
            profile_id = profile[len(SD_PREFIX):] if profile.startswith(SD_PREFIX) else None
            profile_sd = package.structure_definitions.get(profile_id)
            if profile_sd is not None and profile_sd.get("type") == code:
                code = profile_id
        codes.append(code)
    # R4 4.0.1 snapshots type Resource.id as System.String (fhir-type "string"),
    # but resource.html defines Resource.id as the `id` primitive.
    path = element["path"]
    if path.count(".") == 1 and path.endswith(".id") and package.structure_definitions[sd_id]["kind"] == "resource":
        codes = ["id"]
    return codes


def is_system_typed(element):
    """Element.id, Extension.url and the like are FHIRPath system types: no `_x` sibling in JSON."""
    types = element.get("type", [])
    return bool(types) and all(t["code"].startswith(FHIRPATH_SYSTEM) for t in types)


def compact_element(package, sd, element, root_name):
    """One snapshot element in the table's compact form; returns (path, entry, type codes, value set)."""
    path = element["path"]
    # Constraint types (Age, SimpleQuantity, ...) keep their base type's paths: re-root them.
    base_root = path.split(".", 1)[0]
    if base_root != root_name:
        path = root_name + path[len(base_root):]
    entry = {"min": element["min"], "max": element["max"]}
    codes = element_type_codes(package, sd["id"], element)
    if codes:
        entry["types"] = codes
    if is_system_typed(element) and not codes == ["id"]:
        entry["system"] = True
    if "contentReference" in element:
        entry["ref"] = element["contentReference"].lstrip("#")
    targets = sorted(
        {
            profile.rsplit("/", 1)[-1]
            for type_ref in element.get("type", [])
            if type_ref["code"] == "Reference"
            for profile in type_ref.get("targetProfile", [])
        }
    )
    if targets:
        entry["targets"] = targets
    value_set = None
    binding = element.get("binding")
    if binding and binding.get("strength") == "required" and binding.get("valueSet"):
        value_set = strip_version(binding["valueSet"])
        entry["binding"] = value_set
    return path, entry, codes, value_set


def primitive_entry(package, sd):
    value = next(e for e in sd["snapshot"]["element"] if e["path"] == sd["id"] + ".value")
    type_ref = value["type"][0]
    system_name = type_ref["code"][len(FHIRPATH_SYSTEM):]
    kind = JSON_KIND_BY_SYSTEM_TYPE.get(system_name)
    base = sd.get("baseDefinition", "")[len(SD_PREFIX):]
    # positiveInt and unsignedInt type their value as System.String in 4.0.1;
    # they derive from integer and are JSON numbers (json.html).
    while kind is None and base in package.structure_definitions:
        base_sd = package.structure_definitions[base]
        if base_sd.get("kind") != "primitive-type":
            break
        base_value = next(e for e in base_sd["snapshot"]["element"] if e["path"] == base + ".value")
        kind = JSON_KIND_BY_SYSTEM_TYPE.get(base_value["type"][0]["code"][len(FHIRPATH_SYSTEM):])
        base = base_sd.get("baseDefinition", "")[len(SD_PREFIX):]
    entry = {"json": kind or "string"}
    regex = extension_value(type_ref, EXT_REGEX)
    if regex is not None:
        entry["regex"] = regex
    return entry


def collect_types(package):
    """Walk type references from the roots; return (types, primitives, required value sets)."""
    types, primitives, value_sets = {}, {}, set()
    pending = list(ROOT_TYPES)
    while pending:
        name = pending.pop()
        if name in types or name in primitives:
            continue
        sd = package.type_sd(name)
        if sd["kind"] == "primitive-type":
            primitives[name] = primitive_entry(package, sd)
            continue
        elements = {}
        for element in sd["snapshot"]["element"][1:]:
            path, entry, codes, value_set = compact_element(package, sd, element, name)
            elements[path] = entry
            pending.extend(code for code in codes if code not in ("Element", "BackboneElement"))
            if value_set:
                value_sets.add(value_set)
        base = sd.get("baseDefinition", "")[len(SD_PREFIX):] or None
        if base:
            pending.append(base)
        types[name] = {
            "kind": sd["kind"],
            "abstract": sd.get("abstract", False),
            "base": base,
            "elements": elements,
        }
    return types, primitives, value_sets


def code_system_codes(package, system):
    code_system = package.code_systems.get(system)
    if code_system is None:
        raise Unexpandable(f"code system {system} is not in the package")
    if code_system.get("content") != "complete":
        raise Unexpandable(f"code system {system} has content '{code_system.get('content')}'")
    codes = set()
    stack = list(code_system.get("concept", []))
    while stack:
        concept = stack.pop()
        codes.add(concept["code"])
        stack.extend(concept.get("concept", []))
    return codes


def expand_include(package, include, seen):
    """Codes of one compose.include / compose.exclude entry, by system."""
    if include.get("filter"):
        raise Unexpandable(f"filters on {include.get('system')}")
    result = {}
    if include.get("valueSet"):
        if include.get("system"):
            raise Unexpandable("include combines system and valueSet")
        for nested in include["valueSet"]:
            for system, codes in expand_value_set(package, strip_version(nested), seen).items():
                result.setdefault(system, set()).update(codes)
        return result
    system = include.get("system")
    if not system:
        raise Unexpandable("include without system")
    if include.get("concept"):
        result[system] = {concept["code"] for concept in include["concept"]}
    else:
        result[system] = code_system_codes(package, system)
    return result


def expand_value_set(package, url, seen=()):
    if url in seen:
        raise Unexpandable(f"value set {url} includes itself")
    value_set = package.value_sets.get(url)
    if value_set is None:
        raise Unexpandable(f"value set {url} is not in the package")
    compose = value_set.get("compose")
    if not compose:
        raise Unexpandable(f"value set {url} has no compose")
    codes = {}
    for include in compose.get("include", []):
        for system, found in expand_include(package, include, seen + (url,)).items():
            codes.setdefault(system, set()).update(found)
    for exclude in compose.get("exclude", []):
        for system, found in expand_include(package, exclude, seen + (url,)).items():
            codes.get(system, set()).difference_update(found)
    return codes


def value_set_entry(package, url):
    try:
        codes = expand_value_set(package, url)
    except Unexpandable as reason:
        return {"unexpandable": str(reason)}
    return {"codes": {system: sorted(found) for system, found in sorted(codes.items())}}


def check_against_official_expansions(package, value_sets):
    """Compare our expansions with the package's published expansions, if present (report only)."""
    bundle_path = os.path.join(package.folder, "Bundle-valueset-expansions.json")
    if not os.path.exists(bundle_path):
        return
    published = {}
    for entry in load_json(bundle_path).get("entry", []):
        resource = entry.get("resource", {})
        contains = resource.get("expansion", {}).get("contains")
        if contains is None:
            continue
        codes, stack = set(), list(contains)
        while stack:
            item = stack.pop()
            if "code" in item:
                codes.add((item.get("system"), item["code"]))
            stack.extend(item.get("contains", []))
        published[resource.get("url")] = codes
    for url, entry in sorted(value_sets.items()):
        if "codes" not in entry or url not in published:
            continue
        ours = {(system, code) for system, codes in entry["codes"].items() for code in codes}
        if ours != published[url]:
            print(f"note: {url} differs from the published expansion "
                  f"(ours {len(ours)}, published {len(published[url])})", file=sys.stderr)


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    package = Package(argv[1])
    output = argv[2] if len(argv) == 3 else "r4_model.json"
    types, primitives, required = collect_types(package)
    value_sets = {url: value_set_entry(package, url) for url in sorted(required)}
    resource_types = sorted(
        sd["id"]
        for sd in package.structure_definitions.values()
        if sd.get("kind") == "resource" and sd.get("derivation") == "specialization"
        and not sd.get("abstract")
    )
    check_against_official_expansions(package, value_sets)
    model = {
        "header": {
            "source": {
                "package": package.manifest.get("name"),
                "version": package.manifest.get("version"),
                "fhirVersions": package.manifest.get("fhirVersions"),
            },
            "generator": "gen_r4_model.py",
            "license": "FHIR R4 specification content, CC0 (HL7 FHIR license: "
                       "http://hl7.org/fhir/R4/license.html)",
            "strictResources": STRICT_RESOURCES,
        },
        "primitives": primitives,
        "resourceTypes": resource_types,
        "types": types,
        "valueSets": value_sets,
    }
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(model, handle, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        handle.write("\n")
    unexpandable = sorted(url for url, entry in value_sets.items() if "unexpandable" in entry)
    print(f"{output}: {len(types)} types, {len(primitives)} primitives, "
          f"{len(value_sets)} required value sets ({len(unexpandable)} unexpandable), "
          f"{os.path.getsize(output)} bytes", file=sys.stderr)
    for url in unexpandable:
        print(f"  unexpandable: {url}: {value_sets[url]['unexpandable']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
