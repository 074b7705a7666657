// Package kubernetes holds the manifests of a memvisor fleet on Kubernetes
// (kubectl apply -k deploy/kubernetes) and the test that checks them
// offline: every file is decoded strictly with the k8s.io/api types, and
// the properties the fleet depends on are asserted (replicas, memory
// requests equal to limits, the token Secret mounted where the config
// looks for it, probes on the paths serve answers, a grace period above
// the shutdown timeout). The package has no code of its own.
package kubernetes
