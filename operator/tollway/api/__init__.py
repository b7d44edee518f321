"""The public API of Tollway, `tollway.dev/v1alpha1`: typed, validated models of the custom resources."""

from tollway.api.api_tier import ApiTier, ApiTierSpec, ApiTierStatus
from tollway.api.base import API_VERSION, GROUP, VERSION, Condition, Resource
from tollway.api.model_deployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus

RESOURCES: tuple[type[Resource], ...] = (ModelDeployment, ApiTier)
#: Each resource class by its `kind`.
KINDS: dict[str, type[Resource]] = {resource.kind_name: resource for resource in RESOURCES}

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "RESOURCES",
    "VERSION",
    "ApiTier",
    "ApiTierSpec",
    "ApiTierStatus",
    "Condition",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "Resource",
]
