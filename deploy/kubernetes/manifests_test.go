package kubernetes_test

import (
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/memvisor/memvisor/pkg/service"
)

func strict(t *testing.T, file string, into any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, into, func(d *json.Decoder) *json.Decoder {
		d.DisallowUnknownFields()
		return d
	}); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// manifests decodes every file of the kustomization into its typed object.
func manifests(t *testing.T) (dep appsv1.Deployment, sec corev1.Secret, cm corev1.ConfigMap, svc corev1.Service, pvcName string) {
	t.Helper()
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Namespace  string   `json:"namespace"`
		Resources  []string `json:"resources"`
	}
	strict(t, "kustomization.yaml", &k)
	files, _ := filepath.Glob("*.yaml")
	for _, f := range files {
		if f != "kustomization.yaml" && !slices.Contains(k.Resources, f) {
			t.Errorf("%s is not listed in kustomization.yaml", f)
		}
	}
	for _, f := range k.Resources {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(data, &head); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if head.Kind != "Namespace" && head.Metadata.Namespace != k.Namespace {
			t.Errorf("%s: namespace %q, want %q", f, head.Metadata.Namespace, k.Namespace)
		}
		switch head.APIVersion + " " + head.Kind {
		case "apps/v1 Deployment":
			strict(t, f, &dep)
		case "v1 Secret":
			strict(t, f, &sec)
		case "v1 ConfigMap":
			strict(t, f, &cm)
		case "v1 Service":
			strict(t, f, &svc)
		case "v1 Namespace":
			strict(t, f, &corev1.Namespace{})
		case "v1 PersistentVolumeClaim":
			var pvc corev1.PersistentVolumeClaim
			strict(t, f, &pvc)
			pvcName = pvc.Name
			if !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteMany) {
				t.Errorf("%s: access modes %v; the jobs' data is shared by every replica: want ReadWriteMany", f, pvc.Spec.AccessModes)
			}
		case "policy/v1 PodDisruptionBudget":
			var pdb policyv1.PodDisruptionBudget
			strict(t, f, &pdb)
			if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
				t.Errorf("%s: maxUnavailable %v, want 1", f, pdb.Spec.MaxUnavailable)
			}
		default:
			t.Errorf("%s: unexpected %s %s", f, head.APIVersion, head.Kind)
		}
	}
	if dep.Name == "" || sec.Name == "" || cm.Name == "" || svc.Name == "" {
		t.Fatal("the kustomization lacks a Deployment, a Secret, a ConfigMap or a Service")
	}
	return dep, sec, cm, svc, pvcName
}

func TestManifests(t *testing.T) {
	dep, sec, cm, svc, pvcName := manifests(t)

	if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Errorf("replicas %v, want a fleet of at least 2", ptrString(dep.Spec.Replicas))
	}
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want the serve container alone", len(pod.Containers))
	}
	c := pod.Containers[0]
	if !slices.Equal(c.Args[:1], []string{"serve"}) {
		t.Errorf("args %v, want serve", c.Args)
	}

	// Memory: requests equal limits, so the cgroup is a fixed budget.
	lim, req := c.Resources.Limits[corev1.ResourceMemory], c.Resources.Requests[corev1.ResourceMemory]
	if lim.IsZero() || lim.Cmp(req) != 0 {
		t.Errorf("memory request %s, limit %s: want a limit, equal to the request", req.String(), lim.String())
	}
	if lim.Cmp(resource.MustParse("256Mi")) < 0 {
		t.Errorf("memory limit %s leaves runners too little", lim.String())
	}

	// The configuration is the ConfigMap's, and serve accepts it.
	cfgMount := mountOf(t, c, "config")
	vol := volumeOf(t, pod, "config")
	if vol.ConfigMap == nil || vol.ConfigMap.Name != cm.Name {
		t.Fatalf("config volume is not the ConfigMap %s", cm.Name)
	}
	if !slices.Contains(c.Args, cfgMount.MountPath) {
		t.Errorf("args %v do not name the mounted config %s", c.Args, cfgMount.MountPath)
	}
	tokenVol := volumeOf(t, pod, "token")
	if tokenVol.Secret == nil || tokenVol.Secret.SecretName != sec.Name {
		t.Fatalf("token volume is not the Secret %s", sec.Name)
	}
	tokenMount := mountOf(t, c, "token")
	if !tokenMount.ReadOnly {
		t.Error("the token is mounted writable")
	}
	if tokenVol.Secret.DefaultMode == nil || *tokenVol.Secret.DefaultMode&0o007 != 0 {
		t.Errorf("token file mode %v, want no access for others", tokenVol.Secret.DefaultMode)
	}
	var tokenFile string
	for _, it := range tokenVol.Secret.Items {
		if _, ok := sec.StringData[it.Key]; !ok {
			t.Errorf("token volume item %s is not in the Secret", it.Key)
		}
		tokenFile = path.Join(tokenMount.MountPath, it.Path)
	}

	// serve parses the ConfigMap's config strictly, with the token file as
	// the pod will have it.
	tmp := t.TempDir()
	localToken := filepath.Join(tmp, "token")
	if err := os.WriteFile(localToken, []byte("a-token-of-32-bytes-for-the-test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	doc := cm.Data["config.yaml"]
	if !strings.Contains(doc, "token_file: "+tokenFile+"\n") {
		t.Errorf("config.yaml does not read the token from %s, where the Secret is mounted", tokenFile)
	}
	doc = strings.ReplaceAll(doc, tokenFile, localToken)
	cfg, err := service.ParseEnv(strings.NewReader(doc), func(string) string { return "" })
	if err != nil {
		t.Fatalf("serve rejects the ConfigMap's config.yaml: %v", err)
	}
	if !cfg.HasToken() {
		t.Error("the config has no token, yet it listens beyond loopback")
	}
	if cfg.Memory.Budget != 0 {
		t.Errorf("memory.budget %s: want 0, so that the pod's cgroup gives the runners' budget", cfg.Memory.Budget)
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	if grace <= cfg.ShutdownTimeout.D() {
		t.Errorf("terminationGracePeriodSeconds %s, want above shutdown_timeout %s", grace, cfg.ShutdownTimeout)
	}
	_, addr, _ := service.ListenAddr(cfg.Listen)
	port := addr[strings.LastIndex(addr, ":")+1:]
	if len(c.Ports) != 1 || port != itoa(c.Ports[0].ContainerPort) {
		t.Errorf("container ports %v, want the listen port %s", c.Ports, port)
	}
	if !strings.HasPrefix(mountOf(t, c, "state").MountPath, cfg.StateDir) {
		t.Errorf("state_dir %s is not a mounted volume (the root filesystem is read-only)", cfg.StateDir)
	}
	for _, v := range pod.Volumes {
		if v.Name == "state" && v.EmptyDir == nil {
			t.Errorf("volume state is not an emptyDir: state_dir is each pod's own, its checkpoints are in PostgreSQL")
		}
	}
	// Every shared root is on the ReadWriteMany volume, and is allowed.
	if len(cfg.SharedRoots) == 0 {
		t.Error("no shared_roots: a fleet refuses every jsonl job")
	}
	data := mountOf(t, c, "data")
	for _, r := range cfg.SharedRoots {
		if r != data.MountPath && !strings.HasPrefix(r, data.MountPath+"/") {
			t.Errorf("shared root %s is not on the shared volume mounted at %s", r, data.MountPath)
		}
		if !slices.Contains(cfg.AllowedRoots, r) {
			t.Errorf("shared root %s is not in allowed_roots %v", r, cfg.AllowedRoots)
		}
	}
	for _, v := range pod.Volumes {
		if v.Name == "data" && (v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != pvcName) {
			t.Errorf("volume data is not the claim %s", pvcName)
		}
	}

	// The PostgreSQL URL comes from the Secret, never from the ConfigMap.
	if strings.Contains(doc, "postgres_url:") && !strings.Contains(doc, "# postgres_url") {
		t.Error("config.yaml holds postgres_url; it belongs in the Secret")
	}
	var pgEnv *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "MEMVISOR_POSTGRES_URL" {
			pgEnv = &c.Env[i]
		}
	}
	if pgEnv == nil || pgEnv.ValueFrom == nil || pgEnv.ValueFrom.SecretKeyRef == nil ||
		pgEnv.ValueFrom.SecretKeyRef.Name != sec.Name || sec.StringData[pgEnv.ValueFrom.SecretKeyRef.Key] == "" {
		t.Error("MEMVISOR_POSTGRES_URL does not come from a key of the Secret")
	}

	// Probes: readiness and liveness on the paths serve answers without a
	// token, on its port.
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET", name)
			continue
		}
		if want := map[string]string{"readiness": "/readyz", "liveness": "/healthz"}[name]; p.HTTPGet.Path != want {
			t.Errorf("%s probe path %s, want %s", name, p.HTTPGet.Path, want)
		}
		if p.HTTPGet.Port.String() != c.Ports[0].Name && p.HTTPGet.Port.String() != port {
			t.Errorf("%s probe port %s, want the serve port", name, p.HTTPGet.Port.String())
		}
	}

	// Hardening.
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("the container is not read-only with privilege escalation off")
	}
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		t.Error("the pod may run as root")
	}

	// The Service selects the Deployment's pods.
	for k, v := range svc.Spec.Selector {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("service selector %s=%s does not match the pods", k, v)
		}
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != c.Ports[0].Name {
		t.Errorf("service ports %v, want the serve port", svc.Spec.Ports)
	}
}

// TestStrictDecodingCatchesTypos makes sure the check can fail: a
// misspelt field in a Deployment is an error.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	data, err := os.ReadFile("deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(data), "readinessProbe:", "readinesProbe:", 1)
	var dep appsv1.Deployment
	err = yaml.UnmarshalStrict([]byte(bad), &dep, func(d *json.Decoder) *json.Decoder {
		d.DisallowUnknownFields()
		return d
	})
	if err == nil || !strings.Contains(err.Error(), "readinesProbe") {
		t.Errorf("a misspelt key: got %v, want an error naming it", err)
	}
}

func mountOf(t *testing.T, c corev1.Container, name string) corev1.VolumeMount {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.Name == name {
			return m
		}
	}
	t.Fatalf("container %s has no mount %s", c.Name, name)
	return corev1.VolumeMount{}
}

func volumeOf(t *testing.T, pod corev1.PodSpec, name string) corev1.Volume {
	t.Helper()
	for _, v := range pod.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("pod has no volume %s", name)
	return corev1.Volume{}
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

func ptrString(p *int32) string {
	if p == nil {
		return "unset"
	}
	return itoa(*p)
}
