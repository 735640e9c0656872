// Package proto holds lockd's protobuf sources and the Go code generated from
// them: the public API in lockd/v1 (Go package lockdv1, Connect stubs in
// lockdv1connect) and internal encodings that are never served.
//
// Regenerate everything with:
//
//	go generate ./proto
//
// It needs protoc on the PATH (Debian: protobuf-compiler); the Go plugins come
// from the tool directives in go.mod, so their versions always match the
// runtime libraries.
package proto

//go:generate sh generate.sh
