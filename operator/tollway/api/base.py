"""Building blocks shared by the Tollway custom resources.

Every cross-field rule is declared once, as a `Rule`: its CEL expression goes into the CRD (so the API server
refuses bad objects at admission) and its Python twin runs in pydantic (so `tollway render` and the operator
refuse the same objects with the same message, without a cluster).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

GROUP = "tollway.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: A non-negative decimal written as a string ("0.0005"), as Kubernetes APIs write money and ratios.
DecimalString = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?$", max_length=32)]
#: An ISO 4217 currency code.
Currency = Annotated[str, StringConstraints(pattern="^[A-Z]{3}$")]


def _calendar_date(value: str) -> str:
    date.fromisoformat(value)  # 2026-02-31 has the pattern's shape but is no date: ValueError names it
    return value


#: A calendar date, YYYY-MM-DD. Kept as a string so that CEL can compare two of them.
DateString = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$", max_length=10),
    AfterValidator(_calendar_date),
]
#: A Kubernetes resource quantity ("2", "500m", "8Gi").
Quantity = Annotated[
    int | str,
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
        }
    ),
]


def decimal(value: str) -> Decimal:
    """The value of a `DecimalString` (validated by its pattern, so this cannot fail)."""
    return Decimal(value)


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, enforced by the API server (CEL) and by pydantic (`holds`) alike."""

    field: str
    """Path of the offending field, relative to the object that carries the rule (".maxReplicas")."""
    message: str
    cel: str
    holds: Callable[[Any], bool]

    def crd_validation(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": self.message}
        if self.field:
            rule["fieldPath"] = self.field
        return rule


def _add_rules_to_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.crd_validation() for rule in rules]


class TollwayModel(BaseModel):
    """Base of every spec and status model: camelCase on the wire, unknown fields refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
        json_schema_extra=_add_rules_to_schema,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in self.rules:
            if not rule.holds(self):
                raise PydanticCustomError("rule", rule.message, {"field": rule.field.lstrip(".")})
        return self


class Condition(TollwayModel):
    """One status condition, in the shape of Kubernetes' metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, StringConstraints(max_length=1024)]
    """A CamelCase word that a program can match on."""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """What a person needs to know, naming the field at fault when there is one."""
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    """When `status` last changed."""
    observed_generation: int = 0
    """The `metadata.generation` this condition was computed from."""


Conditions = Annotated[
    list[Condition],
    Field(
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]

#: DNS-1035 label: what a Service name must be.
DNS_LABEL = "^[a-z]([-a-z0-9]*[a-z0-9])?$"


def matches(pattern: str, value: str) -> bool:
    """CEL's `matches` (RE2) for the patterns used here. RE2's `$` is the end of the text, where Python's
    would also match before a final newline: so a final `$` becomes `\\Z`."""
    return re.search(re.sub(r"\$$", r"\\Z", pattern), value) is not None


#: The name of an object whose children get suffixes: a DNS label short enough to leave room for them.
#: A CRD may restrict metadata.name only on that string itself, so this rule sits on the name, not the object.
NAME_RULE = Rule(
    field="",
    message="metadata.name must be a DNS label (lower-case letters, digits and '-', starting with a letter) "
    "of at most 40 characters",
    cel=f"self.size() <= 40 && self.matches('{DNS_LABEL}')",
    holds=lambda name: len(name) <= 40 and matches(DNS_LABEL, name),
)


class ObjectMeta(BaseModel):
    """The part of Kubernetes object metadata that Tollway reads; the rest is kept as it is."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_is_a_short_dns_label(cls, name: str) -> str:
        if not NAME_RULE.holds(name):
            raise PydanticCustomError("rule", NAME_RULE.message)
        return name


def pattern_rule(field: str, pattern: str, message: str) -> Rule:
    """A rule that the string at `field` (".name", relative to the model) matches `pattern`, when set."""
    attribute = field.lstrip(".")
    python_name = re.sub(r"(?<!^)(?=[A-Z])", "_", attribute).lower()
    return Rule(
        field=field,
        message=message,
        cel=f"!has(self.{attribute}) || self.{attribute}.matches('{pattern}')",
        holds=lambda model: (
            getattr(model, python_name) is None or matches(pattern, getattr(model, python_name))
        ),
    )


class PrinterColumn(TollwayModel):
    """A column of `kubectl get`."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str = ""


class Resource(TollwayModel):
    """What every Tollway custom resource shares: its identity and the rules on its name."""

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    printer_columns: ClassVar[tuple[PrinterColumn, ...]]
    status_model: ClassVar[type[TollwayModel]]

    api_version: Literal["tollway.dev/v1alpha1"] = "tollway.dev/v1alpha1"
    kind: str
    metadata: ObjectMeta


def ready_column() -> PrinterColumn:
    return PrinterColumn(
        name="Ready", type="string", json_path='.status.conditions[?(@.type=="Ready")].status'
    )


def age_column() -> PrinterColumn:
    return PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp")
