// Package benchmarks holds lockd's load generator (lockbench) and the
// scripts that run it side by side with etcd. It is a module of its own so
// that etcd's client and its dependencies never reach lockd's users.
package benchmarks
