"""schemathesis hooks for make fuzz (SCHEMATHESIS_HOOKS=fuzz_hooks).

With every check on, schemathesis expects any schema-valid request to be accepted. A few
refusals depend on what the API issued or saw before, which no JSON Schema keyword can
state; openapi.json states them in words, and only these refusals are let through here:

- a `cursor` or a batch's `source.key` that the API did not issue (a generated value has the
  documented shape, but only the API hands out real ones): 400 naming only those fields;
- `assignedTo` and its deprecated alias `assignee` both in the GET /api/tasks query (OpenAPI
  cannot relate two query parameters): 400 naming `assignee`;
- a chain's step graph (POST /api/tasks): step names unique, each `dependsOn` naming another
  step, no cycle, and a step's heartbeatSeconds below its timeoutSeconds (JSON Schema cannot
  compare two values of one body): 400 naming `steps[i].name`, `steps[i].dependsOn`,
  `steps` or `steps[i].config.heartbeatSeconds` with those reasons;
- an Idempotency-Key used before for a different body: 422 idempotency_key_reused;
- a schedule (POST /api/schedules, PUT /api/schedules/{id}): its template's step graph as
  above (named `template.steps…`); a cron or rate expression that has the documented shape but
  breaks its grammar (`expression`: a field out of range, both day fields set…); a time zone
  that is not an IANA name (`timeZone`); `endAt` not after `startAt`; a template metadata that
  sets, or leaves no room for, the two keys each firing adds (`template.metadata…`).

Any other refusal of a schema-valid request still fails the run.
"""

import json
import re

import schemathesis

ISSUED_ONLY_BY_THE_API = {"cursor", "source.key"}
# Field → what check_step_graph (shared/src/service/input.rs) or StepConfig::parse
# (shared/src/domain/chain.rs) says when a rule across values is broken.
STEP_GRAPH_RULES = [
    (re.compile(r"^steps\[\d+\]\.name$"), "is used by another step"),
    (re.compile(r"^steps\[\d+\]\.dependsOn$"), "is not the name of a step of this task"),
    (re.compile(r"^steps\[\d+\]\.dependsOn$"), "a step cannot depend on itself"),
    (re.compile(r"^steps$"), "dependsOn forms a cycle"),
    (re.compile(r"^steps\[\d+\]\.config\.heartbeatSeconds$"), "must be less than timeoutSeconds"),
]


def _breaks_a_step_graph_rule(field, problem):
    return any(pattern.match(field) and reason in problem for pattern, reason in STEP_GRAPH_RULES)


SCHEDULE_OPERATIONS = {"POST /api/schedules", "PUT /api/schedules/{id}"}
# Field → what ScheduleInput::parse (shared/src/service/schedules/input.rs) says about a value
# whose rule JSON Schema cannot state ("" matches any problem of that field).
SCHEDULE_RULES = [
    (re.compile(r"^expression$"), ""),
    (re.compile(r"^timeZone$"), "is not an IANA time zone name"),
    (re.compile(r"^endAt$"), "must be after startAt"),
    (re.compile(r"^template\.metadata\.(scheduleId|scheduledAt)$"), "is set by each firing"),
    (re.compile(r"^template\.metadata$"), "must have at most"),
    (re.compile(r"^template\.metadata$"), "bytes as JSON"),
]


def _breaks_a_schedule_rule(field, problem):
    if field.startswith("template.") and _breaks_a_step_graph_rule(field[len("template."):], problem):
        return True
    return any(pattern.match(field) and reason in problem for pattern, reason in SCHEDULE_RULES)


def _error(response):
    try:
        return json.loads(response.content)["error"]
    except (ValueError, TypeError, KeyError):
        return None


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """False drops the failure: the refusal is one of the documented ones above."""
    if failure.code != "ST202":
        return True
    error = _error(response)
    if not isinstance(error, dict):
        return True
    code = error.get("code")
    fields = set(error.get("fields") or {})
    if response.status_code == 400 and code == "validation_failed":
        if fields and fields <= ISSUED_ONLY_BY_THE_API:
            return False
        query = case.query or {}
        if (
            case.operation.label == "GET /api/tasks"
            and fields == {"assignee"}
            and "assignedTo" in query
            and "assignee" in query
        ):
            return False
        problems = error.get("fields") or {}
        if (
            case.operation.label == "POST /api/tasks"
            and problems
            and all(_breaks_a_step_graph_rule(f, str(p)) for f, p in problems.items())
        ):
            return False
        if (
            case.operation.label in SCHEDULE_OPERATIONS
            and problems
            and all(_breaks_a_schedule_rule(f, str(p)) for f, p in problems.items())
        ):
            return False
    if response.status_code == 422 and code == "idempotency_key_reused":
        return False
    return True
