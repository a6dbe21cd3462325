"""OCSF schema checks with maintained PyPI packages, offline, at the version Ensign declares.

Two independent checks of every event:
- `ocsf-json-schema` packages the OCSF project's own schema exports (1.0 to 1.8) and turns a
  class into a JSON Schema (required attributes, enums such as activity_id, attribute types, no
  attributes outside the schema, the at-least-one constraints), which `jsonschema` applies;
- `ocsf-emitter` has pydantic models of OCSF 1.5.0 and a `validate()` with its own invariants
  (class and category identity, type_uid, metadata.version); it has no model of Base Event.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
from ocsf_emitter import defaults, models
from ocsf_emitter import validate as emitter_validate
from ocsf_emitter.errors import InvalidFindingError
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema
from pydantic import ValidationError

from ensign.daemon.audit.export import OCSF_VERSION


@cache
def _schemas() -> OcsfJsonSchemaEmbedded:
    exported = get_ocsf_schema(version=OCSF_VERSION)
    # Base Event (class 0) is kept beside the classes in the export: list it as one of them.
    exported["classes"] = {**exported["classes"], "base_event": exported["base_event"]}
    return OcsfJsonSchemaEmbedded(exported)


@cache
def _validator(class_uid: int, profiles: tuple[str, ...]) -> jsonschema.Draft202012Validator:
    s = _schemas()
    name = "base_event" if class_uid == 0 else s.lookup_class_name_from_uid(class_uid)
    return jsonschema.Draft202012Validator(s.get_class_schema(name, list(profiles)))


def problems(event: dict[str, Any]) -> list[str]:
    """Everything either check finds wrong with one event; [] when both accept it."""
    profiles = tuple(sorted(event.get("metadata", {}).get("profiles", [])))
    found = [_say(e) for e in _validator(int(event["class_uid"]), profiles).iter_errors(event)]
    spec = defaults.class_spec_by_uid(int(event["class_uid"]))
    if spec is not None:
        try:
            emitter_validate(getattr(models, spec.model_name).model_validate(event))
        except ValidationError as e:
            found += [f"ocsf-emitter: {err['loc']}: {err['msg']}" for err in e.errors()]
        except InvalidFindingError as e:
            found += [f"ocsf-emitter: {p}" for p in e.field_errors]
    return found


def _say(e: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in e.absolute_path) or "<event>"
    if e.validator in ("anyOf", "oneOf"):  # OCSF's at_least_one / just_one constraints
        names = [n for alt in e.validator_value for n in alt.get("required", [])]
        return f"{where}: needs {'at least' if e.validator == 'anyOf' else 'just'} one of {names}"
    return f"{where}: {e.message}"
