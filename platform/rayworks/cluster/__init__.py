"""Cluster spec -> local cluster, `ray up` YAML, KubeRay manifests; auth helpers."""
