// Package lockdv1 is the generated Go code of lockd's public API, the
// lockd.v1 protobuf package; the .proto files beside it are the source.
package lockdv1
