package transport

import "fmt"

// Config is the `cluster.tls` section: the files of certificate mode. With
// none set, the data channel runs in shared-key mode on cluster.secret_keys.
type Config struct {
	// CAFile is a PEM bundle of the CA certificates trusted for peers;
	// list the old and the new CA while rotating one.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are this node's certificate, naming node.name,
	// and its private key. They are read again when they change.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// DefaultConfig returns certificate mode off.
func DefaultConfig() Config { return Config{} }

// Enabled reports whether certificate mode is configured.
func (c Config) Enabled() bool { return c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" }

// Files returns the files as CertFiles, or nil when certificate mode is off.
func (c Config) Files() *CertFiles {
	if !c.Enabled() {
		return nil
	}
	return &CertFiles{CA: c.CAFile, Cert: c.CertFile, Key: c.KeyFile}
}

// Validate reports the first bad value, naming its key: the three files
// go together. Their contents are checked when the node starts (and on
// every reload), where they are used, so a config can be checked on a
// machine that does not hold them.
func (c Config) Validate() error {
	if !c.Enabled() {
		return nil
	}
	for _, f := range []struct{ key, path string }{{"ca_file", c.CAFile}, {"cert_file", c.CertFile}, {"key_file", c.KeyFile}} {
		if f.path == "" {
			return fmt.Errorf("tls.%s: empty; set ca_file, cert_file and key_file together (see karuta cluster tls), or none for shared-key mode", f.key)
		}
	}
	return nil
}
