"""JSON Schemas for the KubeRay `ray.io/v1` fields that cluster/kuberay/*.yaml use — checked offline.

Field names and types follow KubeRay's Go API types, from which its CRDs are generated
(ray-project/kuberay: ray-operator/apis/ray/v1/{raycluster,rayjob,rayservice}_types.go and
ray-operator/config/crd/bases/ray.io_*.yaml, v1.5/v1.6), and the Kubernetes core/v1 types for pod templates.

Every object here is closed (`additionalProperties: false`): a misspelt field (`workerGroupSpec`, `minReplica`,
`rayStartParam`) fails the test instead of being silently pruned by the API server. The spec-level objects of the
three CRDs list all their fields; the Kubernetes objects inside pod templates list the fields a toolace-r manifest
may reasonably use — when a manifest needs another one, check its name in the CRD and add it here.
"""
from __future__ import annotations

from typing import Any

STR: dict = {"type": "string"}
BOOL: dict = {"type": "boolean"}
INT: dict = {"type": "integer"}
NUM: dict = {"type": "number"}
STR_MAP: dict = {"type": "object", "additionalProperties": {"type": "string"}}
# resource.Quantity: int-or-string with a Kubernetes suffix ("500m", "32Gi", "8", 2)
QUANTITY: dict = {"anyOf": [{"type": "integer", "minimum": 0},
                            {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"}]}
DNS_LABEL: dict = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}


def closed(properties: dict[str, Any], required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties, "required": required or [], "additionalProperties": False}


RESOURCES = closed({"requests": {"type": "object", "additionalProperties": QUANTITY},
                    "limits": {"type": "object", "additionalProperties": QUANTITY}})
KEY_REF = closed({"name": STR, "key": STR, "optional": BOOL}, ["key"])
ENV_VAR = closed({
    "name": STR,
    "value": STR,  # env values are strings: `value: 1` is rejected by the API server
    "valueFrom": closed({"secretKeyRef": KEY_REF, "configMapKeyRef": KEY_REF,
                         "fieldRef": closed({"fieldPath": STR, "apiVersion": STR}, ["fieldPath"])}),
}, ["name"])
ENV_FROM = closed({"prefix": STR, "secretRef": closed({"name": STR, "optional": BOOL}),
                   "configMapRef": closed({"name": STR, "optional": BOOL})})
PORT = closed({"containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
               "name": {"type": "string", "maxLength": 15}, "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
               "hostPort": INT}, ["containerPort"])
VOLUME_MOUNT = closed({"name": STR, "mountPath": STR, "readOnly": BOOL, "subPath": STR}, ["name", "mountPath"])
PULL_POLICY = {"enum": ["Always", "Never", "IfNotPresent"]}
OPEN_OBJECT: dict = {"type": "object"}  # a Kubernetes object we pass through unchecked (probe, lifecycle, ...)
CONTAINER = closed({
    "name": DNS_LABEL, "image": STR, "imagePullPolicy": PULL_POLICY,
    "command": {"type": "array", "items": STR}, "args": {"type": "array", "items": STR}, "workingDir": STR,
    "env": {"type": "array", "items": ENV_VAR}, "envFrom": {"type": "array", "items": ENV_FROM},
    "ports": {"type": "array", "items": PORT}, "resources": RESOURCES,
    "volumeMounts": {"type": "array", "items": VOLUME_MOUNT},
    "lifecycle": OPEN_OBJECT, "readinessProbe": OPEN_OBJECT, "livenessProbe": OPEN_OBJECT, "startupProbe": OPEN_OBJECT,
    "securityContext": OPEN_OBJECT,
}, ["name", "image"])
VOLUME = closed({
    "name": DNS_LABEL,
    "persistentVolumeClaim": closed({"claimName": STR, "readOnly": BOOL}, ["claimName"]),
    "emptyDir": closed({"medium": {"enum": ["", "Memory"]}, "sizeLimit": QUANTITY}),
    "configMap": OPEN_OBJECT, "secret": OPEN_OBJECT, "hostPath": OPEN_OBJECT, "csi": OPEN_OBJECT,
}, ["name"])
TOLERATION = closed({"key": STR, "operator": {"enum": ["Exists", "Equal"]}, "value": STR,
                     "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                     "tolerationSeconds": INT})
POD_SPEC = closed({
    "containers": {"type": "array", "items": CONTAINER, "minItems": 1},
    "initContainers": {"type": "array", "items": CONTAINER},
    "volumes": {"type": "array", "items": VOLUME},
    "tolerations": {"type": "array", "items": TOLERATION},
    "nodeSelector": STR_MAP, "affinity": OPEN_OBJECT, "serviceAccountName": STR,
    "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
    "imagePullSecrets": {"type": "array", "items": closed({"name": STR}, ["name"])},
    "securityContext": OPEN_OBJECT, "priorityClassName": STR, "terminationGracePeriodSeconds": INT,
}, ["containers"])
OBJECT_META = closed({"name": DNS_LABEL, "generateName": STR, "namespace": DNS_LABEL,
                      "labels": STR_MAP, "annotations": STR_MAP})
POD_TEMPLATE = closed({"metadata": OBJECT_META, "spec": POD_SPEC}, ["spec"])

# ---- ray.io/v1 RayCluster (raycluster_types.go)
AUTOSCALER_OPTIONS = closed({
    "resources": RESOURCES, "image": STR, "imagePullPolicy": PULL_POLICY, "securityContext": OPEN_OBJECT,
    "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
    "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
    "version": {"enum": ["v1", "v2"]},
    "env": {"type": "array", "items": ENV_VAR}, "envFrom": {"type": "array", "items": ENV_FROM},
    "volumeMounts": {"type": "array", "items": VOLUME_MOUNT},
})
AUTH_OPTIONS = closed({"mode": {"enum": ["disabled", "token"]}, "secretName": STR, "enableK8sTokenAuth": BOOL})
# rayStartParams is map[string]string: `num-cpus: 0` (an int) is rejected by the API server, "0" is right.
RAY_START_PARAMS = STR_MAP
HEAD_GROUP_SPEC = closed({
    "template": POD_TEMPLATE, "headService": OPEN_OBJECT, "enableIngress": BOOL,
    "rayStartParams": RAY_START_PARAMS,
    "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
}, ["template"])
REPLICAS = {"type": "integer", "minimum": 0, "maximum": 2147483647}
WORKER_GROUP_SPEC = closed({
    "suspend": BOOL, "groupName": DNS_LABEL, "replicas": REPLICAS, "minReplicas": REPLICAS, "maxReplicas": REPLICAS,
    "idleTimeoutSeconds": {"type": "integer", "minimum": 0}, "rayStartParams": RAY_START_PARAMS,
    "template": POD_TEMPLATE, "scaleStrategy": closed({"workersToDelete": {"type": "array", "items": STR}}),
    "numOfHosts": {"type": "integer", "minimum": 1},
}, ["groupName", "template"])
RAY_CLUSTER_SPEC = closed({
    "suspend": BOOL, "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
    "autoscalerOptions": AUTOSCALER_OPTIONS, "headServiceAnnotations": STR_MAP, "enableInTreeAutoscaling": BOOL,
    "gcsFaultToleranceOptions": OPEN_OBJECT, "headGroupSpec": HEAD_GROUP_SPEC, "rayVersion": STR,
    "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP_SPEC}, "authOptions": AUTH_OPTIONS,
}, ["headGroupSpec"])

# ---- ray.io/v1 RayJob (rayjob_types.go)
RAY_JOB_SPEC = closed({
    "activeDeadlineSeconds": {"type": "integer", "minimum": 1}, "backoffLimit": {"type": "integer", "minimum": 0},
    "rayClusterSpec": RAY_CLUSTER_SPEC, "submitterPodTemplate": POD_TEMPLATE, "metadata": STR_MAP,
    "clusterSelector": STR_MAP, "submitterConfig": closed({"backoffLimit": {"type": "integer", "minimum": 0}}),
    "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
    "deletionStrategy": OPEN_OBJECT,
    "entrypoint": STR, "runtimeEnvYAML": STR, "jobId": STR,
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
    "entrypointResources": STR, "entrypointNumCpus": NUM, "entrypointNumGpus": NUM,
    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0}, "shutdownAfterJobFinishes": BOOL, "suspend": BOOL,
})

# ---- ray.io/v1 RayService (rayservice_types.go)
RAY_SERVICE_SPEC = closed({
    "serveConfigV2": STR,  # a YAML document *as a string* (Serve's config schema, checked separately)
    "rayClusterConfig": RAY_CLUSTER_SPEC, "serveService": OPEN_OBJECT,
    "upgradeStrategy": closed({"type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]},
                               "clusterUpgradeOptions": OPEN_OBJECT}),
    "excludeHeadPodFromServeSvc": BOOL, "rayClusterDeletionDelaySeconds": {"type": "integer", "minimum": 0},
}, ["rayClusterConfig"])


def resource(kind: str, spec: dict, api_version: str = "ray.io/v1") -> dict:
    return closed({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": OBJECT_META,
                   "spec": spec}, ["apiVersion", "kind", "metadata", "spec"])


SCHEMAS: dict[str, dict] = {
    "RayCluster": resource("RayCluster", RAY_CLUSTER_SPEC),
    "RayJob": resource("RayJob", RAY_JOB_SPEC),
    "RayService": resource("RayService", RAY_SERVICE_SPEC),
    "PersistentVolumeClaim": resource("PersistentVolumeClaim", closed({
        "accessModes": {"type": "array", "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany",
                                                            "ReadWriteOncePod"]}, "minItems": 1},
        "storageClassName": STR, "volumeMode": {"enum": ["Filesystem", "Block"]},
        "resources": closed({"requests": closed({"storage": QUANTITY}, ["storage"])}, ["requests"]),
    }, ["accessModes", "resources"]), api_version="v1"),
}
