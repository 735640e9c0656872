// Package lockdv1connect holds the generated Connect clients and handlers of
// the lockd.v1 services.
package lockdv1connect
