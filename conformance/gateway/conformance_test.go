// The official Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance), mesh
// profiles only, run against the cluster of the current kubeconfig (KUBECONFIG, else
// ~/.kube/config). Built by tools/gateway/build.sh into a test binary outside the repository;
// docs/gamma-conformance-notes.md says how it is run and what each test needs from simmesh.
//
// Every flag of the suite (conformance/utils/flags in the module) is accepted, e.g.
//
//	gateway-conformance.test -test.v -test.run TestGatewayAPIMeshConformance \
//	    --supported-features=Mesh,HTTPRoute,GRPCRoute --report-output=report.yaml --version=v0.1.0
//
// Defaults applied here when the flag is not given (so a bare run is a mesh-only run and
// never looks for a GatewayClass):
//
//	--conformance-profiles  MESH-HTTP,MESH-GRPC
//	--supported-features    Mesh,HTTPRoute,GRPCRoute (the profiles' core features; add
//	                        extended ones as simmesh implements them)
//	--gateway-class         "" (the Gateway feature is off: no GatewayClass is needed)
//	--organization, --project, --url, --contact   simmesh's
//	--version               dev
package gateway

import (
	"flag"
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
)

// The core features of the MESH-HTTP and MESH-GRPC profiles.
var defaultSupportedFeatures = []features.FeatureName{
	features.SupportMesh,
	features.SupportHTTPRoute,
	features.SupportGRPCRoute,
}

var defaultProfiles = []suite.ConformanceProfileName{
	suite.MeshHTTPConformanceProfileName,
	suite.MeshGRPCConformanceProfileName,
}

// flagSet reports whether a flag was given on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

func TestGatewayAPIMeshConformance(t *testing.T) {
	opts := conformance.DefaultOptions(t)
	if !flagSet("conformance-profiles") {
		opts.ConformanceProfiles = defaultProfiles
	}
	if !flagSet("supported-features") && !flagSet("exempt-features") && !flagSet("all-features") {
		opts.SupportedFeatures = defaultSupportedFeatures
	}
	if !flagSet("gateway-class") {
		opts.GatewayClassName = ""
	}
	impl := &opts.Implementation
	if impl.Organization == "" {
		impl.Organization = "simmesh"
	}
	if impl.Project == "" {
		impl.Project = "simmesh"
	}
	if impl.URL == "" {
		impl.URL = "https://github.com/simmesh/simmesh"
	}
	if impl.Version == "" {
		impl.Version = "dev"
	}
	if len(impl.Contact) == 0 {
		impl.Contact = []string{"@simmesh/maintainers"}
	}
	conformance.RunConformanceWithOptions(t, opts)
}
