// Package config loads hapbx's YAML configuration file into one typed tree,
// fills in defaults and validates it.
//
// Every problem is reported at once, each as "FILE: field.path: reason", so an
// operator fixes a file in one pass rather than one error per start. Unknown
// keys are errors (a misspelt key would otherwise silently keep its default).
//
// Each component owns the Config struct of its own section (proxy.Config and
// so on) with its defaults and Validate; this package assembles the sections,
// checks what spans them (backend names, routing, sip.tcp.idle_timeout
// against registrar.max_expires), and formats the errors. Secret files are
// checked as they will be read (internal/secretfile: a file group or
// others may read is a problem naming it and its mode). It does not open
// sockets, read secrets at run time, or start anything.
//
// Two kinds of file: the proxy's (`hapbx run`; Load/Parse) and a PBX
// node's (`hapbx agent`; LoadAgent/ParseAgent: node, agent and log
// sections; IsAgentFile tells them apart: agent: and no backends:).
package config
