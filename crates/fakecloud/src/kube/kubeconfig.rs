//! A kubeconfig (`clientcmd/api/v1` `Config`, kubernetes
//! `staging/src/k8s.io/client-go/tools/clientcmd/api/v1/types.go`) naming one cluster, one
//! bearer-token user and one context, for kubectl (`--kubeconfig`, `KUBECONFIG`) and the Rust
//! `kube` crate (`Config::from_custom_kubeconfig`, `Config::infer`).
//!
//! Written as YAML in block style whose scalars are JSON strings: JSON string syntax is a
//! subset of YAML's double-quoted scalars, so any value is quoted correctly.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The names used inside the kubeconfig.
pub const CLUSTER: &str = "fakecloud";
pub const CONTEXT: &str = "fakecloud";

/// What a kubeconfig points at.
#[derive(Debug, Clone)]
pub struct Kubeconfig<'a> {
    /// `https://127.0.0.1:PORT`.
    pub server: &'a str,
    /// The CA that signed the server's certificate, PEM; embedded as `certificate-authority-data`.
    pub ca_pem: &'a str,
    pub user: &'a str,
    pub token: &'a str,
    /// The context's default namespace.
    pub namespace: &'a str,
}

fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl Kubeconfig<'_> {
    /// The document's text.
    pub fn to_yaml(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: {cluster}\n  \
               cluster:\n    \
                 server: {server}\n    \
                 certificate-authority-data: {ca}\n\
             users:\n\
             - name: {user}\n  \
               user:\n    \
                 token: {token}\n\
             contexts:\n\
             - name: {context}\n  \
               context:\n    \
                 cluster: {cluster}\n    \
                 user: {user}\n    \
                 namespace: {namespace}\n\
             current-context: {context}\n\
             preferences: {{}}\n",
            cluster = quoted(CLUSTER),
            context = quoted(CONTEXT),
            server = quoted(self.server),
            ca = quoted(&STANDARD.encode(self.ca_pem.as_bytes())),
            user = quoted(self.user),
            token = quoted(self.token),
            namespace = quoted(self.namespace),
        )
    }

    /// Writes the document to `path` with mode 0600 (it holds a token), creating parent
    /// directories.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(self.to_yaml().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_every_value() {
        let text = Kubeconfig {
            server: "https://127.0.0.1:6443",
            ca_pem: "-----BEGIN CERTIFICATE-----\n",
            user: "admin",
            token: "a\"b: c",
            namespace: "default",
        }
        .to_yaml();
        assert!(
            text.contains("    server: \"https://127.0.0.1:6443\"\n"),
            "{text}"
        );
        assert!(text.contains("    token: \"a\\\"b: c\"\n"), "{text}");
        assert!(text.contains("current-context: \"fakecloud\"\n"));
    }
}
