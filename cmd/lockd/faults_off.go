//go:build !lockd_faults

package main

import (
	"net/http"

	"github.com/lockd-io/lockd/node"
)

// faultInjection is compiled out of normal builds (see faults_on.go).
func faultInjection(*http.ServeMux) node.Faults { return nil }
