// Package server holds lockd's Connect handlers: every service of the
// lockd.v1 API, the gRPC health and reflection services, the table from
// domain errors to Connect codes, and the interceptors every call passes
// through. It reaches the replicated node only through the small interfaces
// it declares, so it can be tested against anything that implements them.
package server
