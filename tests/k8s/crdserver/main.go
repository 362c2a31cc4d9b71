package main

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"
	crdapi "k8s.io/apiextensions-apiserver/pkg/apiserver"
	"k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	genopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	"k8s.io/apiserver/pkg/authentication/request/anonymous"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	"k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	utilopenapi "k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
)

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "crdserver:", err)
		os.Exit(1)
	}
}

func main() {
	o := options.NewCustomResourceDefinitionsServerOptions(os.Stdout, os.Stderr)
	fs := pflag.NewFlagSet("crdserver", pflag.ExitOnError)
	o.AddFlags(fs)
	check(fs.Parse(os.Args[1:]))
	check(o.ServerRunOptions.ComponentGlobalsRegistry.Set())
	// No kube-apiserver to delegate to: drop delegated authn/authz, core-API
	// informers, admission plugins and API priority & fairness.
	ro := o.RecommendedOptions
	ro.Authentication, ro.Authorization, ro.CoreAPI, ro.Admission = nil, nil, nil, nil
	ro.Features.EnablePriorityAndFairness = false
	check(o.Complete())
	check(o.Validate())
	check(ro.SecureServing.MaybeDefaultWithSelfSignedCerts("localhost", nil, nil))
	cfg := genericapiserver.NewRecommendedConfig(crdapi.Codecs)
	cfg.SharedInformerFactory = informers.NewSharedInformerFactory(fake.NewSimpleClientset(), 0)
	check(o.ServerRunOptions.ApplyTo(&cfg.Config))
	check(ro.ApplyTo(cfg))
	check(o.APIEnablement.ApplyTo(&cfg.Config, crdapi.DefaultAPIResourceConfigSource(), crdapi.Scheme))
	cfg.Authentication.Authenticator = anonymous.NewAuthenticator(nil)
	cfg.Authorization.Authorizer = authorizerfactory.NewAlwaysAllowAuthorizer()
	defs := utilopenapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(genopenapi.GetOpenAPIDefinitions)
	cfg.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(defs, openapi.NewDefinitionNamer(crdapi.Scheme))
	cfg.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(defs, openapi.NewDefinitionNamer(crdapi.Scheme, scheme.Scheme))
	getter := options.NewCRDRESTOptionsGetter(*ro.Etcd, cfg.ResourceTransformers, cfg.StorageObjectCountTracker)
	c := &crdapi.Config{GenericConfig: cfg, ExtraConfig: crdapi.ExtraConfig{CRDRESTOptionsGetter: getter}}
	s, err := c.Complete().New(genericapiserver.NewEmptyDelegate())
	check(err)
	check(s.GenericAPIServer.PrepareRun().RunWithContext(genericapiserver.SetupSignalContext()))
}
