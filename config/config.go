package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"

	"go.uber.org/zap/zapcore"
	"go.yaml.in/yaml/v3"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/failover"
	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/secretfile"
	"github.com/hapbx/hapbx/media"
	"github.com/hapbx/hapbx/proxy"
	"github.com/hapbx/hapbx/proxy/limits"
	"github.com/hapbx/hapbx/proxy/trunk"
	"github.com/hapbx/hapbx/registrar"
)

// File is the whole configuration file.
type File struct {
	Node     Node         `yaml:"node"`
	SIP      proxy.Config `yaml:"sip"`
	Backends []Backend    `yaml:"backends"`
	// Trunks are the providers' SIP trunks (see package proxy/trunk).
	Trunks []trunk.Config `yaml:"trunks"`
	// Failover holds the top-level keys routing and failback.
	Failover failover.Config `yaml:",inline"`
	Health   health.Config   `yaml:"health"`
	// Registrar holds the phones' bindings.
	Registrar registrar.Config `yaml:"registrar"`
	// Media is the RTP relay that anchors calls' media on hapbx.
	Media media.Config `yaml:"media"`
	Admin Admin        `yaml:"admin"`
	Log   Log          `yaml:"log"`
	// Limits is the memory budget, the cap on pending transactions and the
	// per-source flood guard.
	Limits limits.Config `yaml:"limits"`
	// Cluster is the proxy pair (and witness): membership, the VIP and its
	// holder, replicated state. Off unless cluster.peers is set.
	Cluster cluster.Config `yaml:"cluster"`
	// Cold is cold standby (failover mode cold); see config/cold.go.
	Cold failover.ColdConfig `yaml:"cold"`
	// Agent is a PBX node's storage agent (`hapbx agent`).
	Agent AgentConfig `yaml:"agent"`
}

// Node names this hapbx instance.
type Node struct {
	Name string `yaml:"name"`
}

// Backend is one Asterisk node, in priority order.
type Backend struct {
	Name      string `yaml:"name"`
	Address   string `yaml:"address"`
	Transport string `yaml:"transport"`
	// TCP says a UDP backend also listens for SIP over TCP on Address:
	// a request that grows past 1300 bytes goes there (RFC 3261 §18.1.1)
	// rather than as one large UDP datagram.
	TCP bool `yaml:"tcp"`
	AMI *AMI `yaml:"ami,omitempty"`
	// Agent is the node's storage agent, required in cold standby.
	Agent *BackendAgent `yaml:"agent,omitempty"`
}

// AMI is how to reach a backend's Asterisk Manager Interface.
type AMI struct {
	Address    string `yaml:"address"`
	Username   string `yaml:"username"`
	SecretFile string `yaml:"secret_file"`
}

// Admin is the local HTTP interface: metrics, health and status.
type Admin struct {
	Listen    string `yaml:"listen"`
	TokenFile string `yaml:"token_file"`
	// TLS, when set, serves the interface over HTTPS only; the CLI
	// (status, standby, takeover) then trusts exactly TLS.Cert.
	TLS AdminTLS `yaml:"tls"`
	// Pprof serves Go's profiles under /debug/pprof/, to holders of the
	// token only.
	Pprof bool `yaml:"pprof"`
}

// AdminTLS names the PEM files of the admin interface's HTTPS.
type AdminTLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// problems checks the admin section (proxy and witness files).
func (a Admin) problems() []string {
	var p []string
	if a.Listen != "" {
		if err := checkHostPort(a.Listen); err != nil {
			p = append(p, "admin.listen: "+err.Error())
		}
	}
	if a.TokenFile != "" {
		if _, err := secretfile.Read(a.TokenFile); err != nil {
			p = append(p, "admin.token_file: "+err.Error())
		}
	}
	switch {
	case a.TLS.Cert == "" && a.TLS.Key == "":
	case a.TLS.Cert == "":
		p = append(p, "admin.tls.cert: required with admin.tls.key")
	case a.TLS.Key == "":
		p = append(p, "admin.tls.key: required with admin.tls.cert")
	default:
		if _, err := secretfile.LoadX509KeyPair(a.TLS.Cert, a.TLS.Key); err != nil {
			p = append(p, "admin.tls: "+err.Error())
		}
	}
	if a.Pprof && a.TokenFile == "" {
		p = append(p, "admin.pprof: needs admin.token_file (profiles are served only with its token)")
	}
	return p
}

// Log selects the log level and encoding.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// Default returns a File with every default filled in.
func Default() File {
	host, _ := os.Hostname()
	return File{
		Node:      Node{Name: host},
		SIP:       proxy.DefaultConfig(),
		Failover:  failover.DefaultConfig(),
		Health:    health.DefaultConfig(),
		Registrar: registrar.DefaultConfig(),
		Media:     media.DefaultConfig(),
		Limits:    limits.DefaultConfig(),
		Cluster:   clusterDefaults(),
		Admin:     Admin{Listen: "127.0.0.1:9060"},
		Log:       Log{Level: "info", Format: "json"},
		Cold:      failover.DefaultColdConfig(),
		Agent:     DefaultAgent(),
	}
}

// Error lists every problem found in one configuration file.
type Error struct {
	File     string
	Problems []string // "field.path: reason"
	// Err is the cause when the file could not be read at all.
	Err error
}

// Unwrap returns the read error, if any.
func (e *Error) Unwrap() error { return e.Err }

func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.File)
		b.WriteString(": ")
		// One line per problem: YAML's messages may quote multi-line values.
		b.WriteString(strings.ReplaceAll(strings.TrimSpace(p), "\n", `\n`))
	}
	return b.String()
}

// Load reads, decodes and validates the file at path. On any problem it
// returns an *Error listing all of them.
func Load(path string) (File, error) {
	data, err := ReadFile(path)
	if err != nil {
		return File{}, err
	}
	return Parse(path, data)
}

// Parse decodes and validates data; name is used in error messages.
func Parse(name string, data []byte) (File, error) {
	f, problems, err := decode(name, data)
	if err != nil {
		return File{}, err
	}
	problems = append(problems, f.problems()...)
	if len(problems) > 0 {
		return File{}, &Error{File: name, Problems: problems}
	}
	return f, nil
}

// decode fills a default File from data and returns the decoding problems
// (unknown keys with their paths, type errors); err only when data is not
// YAML at all. Each kind of file (proxy, agent, witness) then checks the
// sections it uses.
func decode(name string, data []byte) (File, []string, error) {
	f := Default()
	var problems []string
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return File{}, nil, &Error{File: name, Problems: []string{yamlProblem(err)}}
	}
	if len(root.Content) > 0 {
		problems = append(problems, unknownKeys(root.Content[0], reflect.TypeOf(f), "")...)
	}
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, m := range te.Errors {
				if !strings.Contains(m, "not found in type") { // reported with its path above
					problems = append(problems, typeProblem(&root, m))
				}
			}
		} else {
			problems = append(problems, yamlProblem(err))
		}
	}
	for i := range f.Trunks {
		f.Trunks[i] = f.Trunks[i].WithDefaults()
	}
	return f, problems, nil
}

// typeProblem puts the key path in front of a YAML type error ("line 5:
// cannot unmarshal !!str `fast` into time.Duration"), found from its line.
func typeProblem(root *yaml.Node, msg string) string {
	var line int
	if _, err := fmt.Sscanf(msg, "line %d:", &line); err != nil || len(root.Content) == 0 {
		return msg
	}
	if p := pathAtLine(root.Content[0], line, ""); p != "" {
		return p + ": " + msg
	}
	return msg
}

// pathAtLine returns the key path of the value that starts on line (the
// deepest one), or "".
func pathAtLine(n *yaml.Node, line int, path string) string {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			if deeper := pathAtLine(v, line, p); deeper != "" {
				return deeper
			}
			if v.Line == line || k.Line == line && (v.Kind == yaml.ScalarNode || v.Kind == yaml.AliasNode) {
				return p
			}
		}
	case yaml.SequenceNode:
		// Into mappings only: a scalar item's error names the list (a list
		// where a string belongs reports on the list's own line).
		for i, c := range n.Content {
			if deeper := pathAtLine(c, line, fmt.Sprintf("%s[%d]", path, i)); deeper != "" {
				return deeper
			}
		}
	}
	return ""
}

// ReadFile reads a configuration file; a failure is an *Error naming it
// ("FILE: cannot read the file: reason") that unwraps to the OS error.
func ReadFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		reason := err
		var pe *fs.PathError
		if errors.As(err, &pe) {
			reason = pe.Err
		}
		return nil, &Error{File: path, Problems: []string{"cannot read the file: " + reason.Error()}, Err: err}
	}
	return data, nil
}

func yamlProblem(err error) string {
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

// Validate checks a File assembled in code (not read from a file).
func (f File) Validate() error {
	if p := f.problems(); len(p) > 0 {
		return &Error{File: "config", Problems: p}
	}
	return nil
}

func (f File) problems() []string {
	var p []string
	add := func(prefix string, err error) {
		for _, e := range flatten(err) {
			p = append(p, prefix+e.Error())
		}
	}
	if strings.TrimSpace(f.Node.Name) == "" {
		p = append(p, "node.name: must not be empty")
	}
	add("sip.", f.SIP.Validate())
	if len(f.Backends) == 0 {
		p = append(p, "backends: at least one backend is required")
	}
	seen := map[string]int{}
	for i, b := range f.Backends {
		at := fmt.Sprintf("backends[%d].", i)
		if b.Name == "" {
			p = append(p, at+"name: must not be empty")
		} else if j, dup := seen[b.Name]; dup {
			p = append(p, fmt.Sprintf("%sname: %q already used by backends[%d]", at, b.Name, j))
		} else {
			seen[b.Name] = i
		}
		if err := checkHostPort(b.Address); err != nil {
			p = append(p, at+"address: "+err.Error())
		}
		switch b.Transport {
		case "udp", "tcp", "tls":
		case "":
			p = append(p, at+"transport: must be udp, tcp or tls")
		default:
			p = append(p, fmt.Sprintf("%stransport: %q is not udp, tcp or tls", at, b.Transport))
		}
		if b.TCP && b.Transport != "udp" {
			p = append(p, fmt.Sprintf("%stcp: only for a udp backend (transport is %q)", at, b.Transport))
		}
		if b.AMI != nil {
			if err := checkHostPort(b.AMI.Address); err != nil {
				p = append(p, at+"ami.address: "+err.Error())
			}
			if b.AMI.Username == "" {
				p = append(p, at+"ami.username: must not be empty")
			}
			if b.AMI.SecretFile == "" {
				p = append(p, at+"ami.secret_file: must not be empty")
			} else if _, err := secretfile.Read(b.AMI.SecretFile); err != nil {
				p = append(p, at+"ami.secret_file: "+err.Error())
			}
		}
	}
	p = append(p, f.trunkProblems(seen)...)
	add("", f.Failover.Validate())
	p = append(p, f.coldProblems()...)
	add("health.", f.Health.Validate())
	add("registrar.", f.Registrar.Validate())
	p = append(p, f.idleProblems()...)
	add("media.", f.Media.Validate())
	add("limits.", f.Limits.Validate())
	if f.ClusterEnabled() {
		add("cluster.", f.ClusterConfig().Validate())
		p = append(p, keyringProblems(f.Cluster.SecretFile)...)
		if f.SIP.DialogSecretFile == "" {
			// A random per-node key would make the twin that takes the VIP
			// refuse every call in progress.
			p = append(p, "sip.dialog_secret_file: required with cluster.peers (the same file on both proxies)")
		}
	}
	p = append(p, f.Admin.problems()...)
	if _, err := zapcore.ParseLevel(f.Log.Level); err != nil {
		p = append(p, fmt.Sprintf("log.level: %q is not debug, info, warn or error", f.Log.Level))
	}
	switch f.Log.Format {
	case "json", "console":
	default:
		p = append(p, fmt.Sprintf("log.format: %q is not json or console", f.Log.Format))
	}
	return p
}

// idleProblems: a phone registered over TCP or TLS is reached over its
// connection and may be silent on it for as long as its registration
// lasts, so sip.tcp.idle_timeout must outlast the longest one hapbx grants.
func (f File) idleProblems() []string {
	ls, err := f.SIP.Listeners()
	if err != nil {
		return nil // reported under sip.listen
	}
	for _, l := range ls {
		if l.Transport != "udp" && f.SIP.TCP.IdleTimeout <= f.Registrar.MaxExpires {
			return []string{fmt.Sprintf("sip.tcp.idle_timeout: %v must exceed registrar.max_expires (%v): a phone registered over TCP or TLS is silent on its connection between refreshes",
				f.SIP.TCP.IdleTimeout, f.Registrar.MaxExpires)}
		}
	}
	return nil
}

// flatten undoes errors.Join so each problem gets its own line and prefix.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func checkHostPort(s string) error {
	if s == "" {
		return errors.New("must be host:port")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", s, err)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port must be 1-65535", s)
	}
	return nil
}

// unknownKeys walks the YAML tree beside the Go type and reports every key
// the type does not have, with its full path and line.
func unknownKeys(n *yaml.Node, t reflect.Type, path string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var out []string
	switch {
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Struct:
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			ft, ok := fields[k.Value]
			if !ok {
				out = append(out, fmt.Sprintf("%s: unknown key (line %d)", p, k.Line))
				continue
			}
			out = append(out, unknownKeys(v, ft, p)...)
		}
	case n.Kind == yaml.SequenceNode && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array):
		for i, c := range n.Content {
			out = append(out, unknownKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Map:
		for i := 0; i+1 < len(n.Content); i += 2 {
			out = append(out, unknownKeys(n.Content[i+1], t.Elem(), path+"."+n.Content[i].Value)...)
		}
	}
	return out
}

func yamlFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") {
			for k, v := range yamlFields(f.Type) {
				m[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = f.Type
	}
	return m
}

func clusterDefaults() cluster.Config {
	c := cluster.DefaultConfig()
	c.Name = "" // node.name unless set
	return c
}

// ClusterEnabled reports whether this node is part of a proxy cluster.
func (f File) ClusterEnabled() bool { return len(f.Cluster.Peers) > 0 }

// ClusterConfig is the cluster section with the node's name filled in.
func (f File) ClusterConfig() cluster.Config {
	c := f.Cluster
	if c.Name == "" {
		c.Name = f.Node.Name
	}
	return c
}

// IsWitnessFile reports whether data is a witness's file: a cluster
// section and neither backends nor an agent.
func IsWitnessFile(data []byte) bool {
	var top map[string]yaml.Node
	if yaml.Unmarshal(data, &top) != nil {
		return false
	}
	_, c := top["cluster"]
	_, b := top["backends"]
	_, a := top["agent"]
	return c && !b && !a
}

// LoadWitness reads and validates a witness's file: node, cluster (no VIP
// needed), admin and log.
func LoadWitness(path string) (File, error) {
	data, err := ReadFile(path)
	if err != nil {
		return File{}, err
	}
	return ParseWitness(path, data)
}

// ParseWitness decodes and validates a witness's file.
func ParseWitness(name string, data []byte) (File, error) {
	f, problems, err := decode(name, data)
	if err != nil {
		return File{}, err
	}
	if strings.TrimSpace(f.Node.Name) == "" {
		problems = append(problems, "node.name: must not be empty")
	}
	if !f.ClusterEnabled() {
		problems = append(problems, "cluster.peers: a witness needs the voters (proxies and itself)")
	} else {
		for _, e := range flatten(f.ClusterConfig().ValidateWitness()) {
			problems = append(problems, "cluster."+e.Error())
		}
		problems = append(problems, keyringProblems(f.Cluster.SecretFile)...)
	}
	problems = append(problems, f.Admin.problems()...)
	if _, err := zapcore.ParseLevel(f.Log.Level); err != nil {
		problems = append(problems, fmt.Sprintf("log.level: %q is not debug, info, warn or error", f.Log.Level))
	}
	if len(problems) > 0 {
		return File{}, &Error{File: name, Problems: problems}
	}
	return f, nil
}

// keyringProblems checks the gossip key file now rather than when the
// cluster starts: a node with a missing or wrong key cannot join.
func keyringProblems(path string) []string {
	if path == "" {
		return nil // reported by the cluster section's own validation
	}
	if _, err := cluster.LoadKeyring(path); err != nil {
		return []string{"cluster.secret_file: " + err.Error()}
	}
	return nil
}

// trunkProblems checks the trunks: each one's settings, unique names, its
// credentials file (a secret file) and the backends it names (backends: the
// configured backends' names and their index).
func (f File) trunkProblems(backends map[string]int) []string {
	var p []string
	names := map[string]int{}
	for i, t := range f.Trunks {
		at := fmt.Sprintf("trunks[%d].", i)
		for _, e := range flatten(t.Validate()) {
			p = append(p, at+e.Error())
		}
		if j, dup := names[t.Name]; dup && t.Name != "" {
			p = append(p, fmt.Sprintf("%sname: %q already used by trunks[%d]", at, t.Name, j))
		} else {
			names[t.Name] = i
		}
		if t.CredentialsFile != "" {
			b, err := secretfile.Read(t.CredentialsFile)
			if err == nil {
				if _, perr := trunk.Password(b); perr != nil {
					err = fmt.Errorf("%s: %w", t.CredentialsFile, perr)
				}
			}
			if err != nil {
				p = append(p, at+"credentials_file: "+err.Error())
			}
		}
		for j, b := range t.Backends {
			if _, ok := backends[b]; !ok {
				p = append(p, fmt.Sprintf("%sbackends[%d]: %q is no backend's name", at, j, b))
			}
		}
	}
	if _, err := trunk.NewACL(f.Trunks); err != nil {
		p = append(p, "trunks: "+err.Error())
	}
	return p
}
