"""The local test bed that the tests, the demo (hack/demo.py) and the benchmarks (bench/) share: each
component started one way, on loopback, from the real binaries.

- controlplane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (the
  `hack/controlplane` command)
- nodes: the control plane's simulated GPU nodes and the kwok stages that play their kubelets
- kube: kubectl as a cluster's user, `tollway run` as a subprocess, waiting for a condition
- processes: free ports, a process started and waited for, the Go tools hack/build-tools.sh builds
- triton: Triton Inference Server on CPU (the nvidia-pytriton wheel) serving the echo model
- dataplane: the gateway's data path (Redis, the ratelimit service, Envoy replicas), Prometheus on Tollway's
  rules, prometheus-adapter
- gateway: the gateway tests' bed (Triton, the data path, certificates, a JWKS server, a recording upstream)
- client: a request as a client sends it (one Reply for all), latency percentiles
- report: the demo's report: built from measurements, printed, judged

hack/setup puts hack/ on the venv's import path (a .pth file), so `import testbed` works in every script and
test without editing sys.path. Nothing here ships in the operator's wheel. This file, controlplane and nodes
use the standard library only: `hack/controlplane` runs before the venv exists.
"""
