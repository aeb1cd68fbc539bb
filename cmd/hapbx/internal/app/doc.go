// Package app assembles hapbx's components into the commands of the hapbx
// binary: it parses flags, loads the configuration, builds each component
// with its logger and metrics registry, serves the admin HTTP interface and
// handles signals. It holds no SIP, health or storage logic of its own.
package app
