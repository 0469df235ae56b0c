//! The site service's configuration file (TOML).

use std::net::SocketAddr;

use serde::Deserialize;
use stamp_core::profile::ServiceName;

/// The default configuration, every option commented (`stamp site serve --print-config`).
pub const DEFAULT_CONFIG: &str = r#"# stamp site service configuration: stamp site serve --dir SITE --config FILE
# Every option is shown with its default value; a file may leave any of them out.

# Address and port to listen on (`--listen` overrides it; port 0 picks a free port).
listen = "127.0.0.1:8443"

# Names stations reach the service by: fully qualified DNS names or IP addresses. The service's TLS
# certificate (profile site-service) is issued for them by the site issuing CA, for a fresh key, at
# every start. "localhost" stands for 127.0.0.1 and ::1 (a single-label name is not a valid dNSName
# in a certificate; stamp's clients check a localhost service for the loopback address they reach).
server_names = ["localhost", "127.0.0.1"]

# Entitlement for EST requests without a label (/.well-known/est/simpleenroll). "" means none:
# such requests are refused with unknown-entitlement. With a label
# (/.well-known/est/<entitlement>/simpleenroll) the label names the entitlement.
default_entitlement = ""

# Largest request body accepted, in bytes; larger ones are refused with body-too-large (413).
# A device CSR is at most 8 KiB of DER.
max_body_bytes = 65536

# Seconds a client has to complete the TLS handshake.
handshake_timeout_secs = 10

# Seconds a client has to send a request's headers.
header_timeout_secs = 10

# Seconds one request may take, reading its body included; then it is answered with timeout (503).
# An issuance that already started still completes and is logged (it was never acknowledged).
request_timeout_secs = 30

# Most open connections; further ones are closed at once.
max_connections = 1024

# Most requests being decided and logged at the same time; further ones wait their turn.
max_in_flight = 256

# Seconds in-flight requests get to finish after SIGTERM or Ctrl-C. Every issuance that was
# acknowledged is in the audit log whatever happens; this only bounds how long the service waits.
shutdown_timeout_secs = 30

# Seconds between checks for entitlement packages imported while the service runs
# (`stamp site import`); new grants and amendments (top-ups, suspensions, revocations) take effect
# at the next check. 0 turns it off (then restart the service after an import).
reload_interval_secs = 2

# Log format on standard error: "text" or "json" (`--log-format` overrides it). The level comes
# from STAMP_LOG (default "info"). Logs never hold keys, secrets or CSRs.
log_format = "text"

# Address of the operations listener: GET /healthz and GET /metrics over plain HTTP, without a
# client certificate, for a load balancer's probe and a Prometheus scraper (`--ops-listen`
# overrides it; port 0 picks a free port; "off": none). Keep it on a loopback or management address.
ops_listen = "127.0.0.1:8444"
"#;

/// The service's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Names in the server certificate.
    pub server_names: Vec<String>,
    /// Entitlement of label-less EST requests ("" = none).
    pub default_entitlement: String,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// TLS handshake timeout.
    pub handshake_timeout_secs: u64,
    /// Header read timeout.
    pub header_timeout_secs: u64,
    /// Whole-request timeout.
    pub request_timeout_secs: u64,
    /// Connection limit.
    pub max_connections: usize,
    /// Concurrent decisions limit.
    pub max_in_flight: usize,
    /// Grace period on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Entitlement reload polling interval (0 = off).
    pub reload_interval_secs: u64,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// The operations listener's address, or `off` (see [`Config::ops_listen`]).
    pub ops_listen: String,
}

/// How the service writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            default_entitlement: String::new(),
            max_body_bytes: 64 * 1024,
            handshake_timeout_secs: 10,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            max_connections: 1024,
            max_in_flight: 256,
            shutdown_timeout_secs: 30,
            reload_interval_secs: 2,
            log_format: LogFormat::Text,
            ops_listen: "127.0.0.1:8444".into(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not TOML, unknown option or wrong type.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Largest configuration file read.
pub const MAX_CONFIG: usize = 64 * 1024;

impl Config {
    /// Parses and checks a configuration file's text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG {
            return Err(ConfigError::Invalid("the file is over 64 KiB".into()));
        }
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    /// Checks ranges and names.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.server_names.is_empty() || self.server_names.len() > 32 {
            return bad("server_names needs 1 to 32 names");
        }
        self.service_names()?;
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return bad("max_body_bytes must be between 1024 and 16777216");
        }
        for (v, name) in [
            (self.handshake_timeout_secs, "handshake_timeout_secs"),
            (self.header_timeout_secs, "header_timeout_secs"),
            (self.request_timeout_secs, "request_timeout_secs"),
        ] {
            if !(1..=3600).contains(&v) {
                return Err(ConfigError::Invalid(format!("{name} must be between 1 and 3600")));
            }
        }
        if self.shutdown_timeout_secs > 3600 {
            return bad("shutdown_timeout_secs must be at most 3600");
        }
        if self.reload_interval_secs > 3600 {
            return bad("reload_interval_secs must be at most 3600");
        }
        if !(1..=100_000).contains(&self.max_connections) {
            return bad("max_connections must be between 1 and 100000");
        }
        if !(1..=10_000).contains(&self.max_in_flight) {
            return bad("max_in_flight must be between 1 and 10000");
        }
        if self.default_entitlement.len() > 64 || self.default_entitlement.chars().any(char::is_control) {
            return bad("default_entitlement must be an entitlement ID (at most 64 characters)");
        }
        self.ops_listen()?;
        Ok(())
    }

    /// The operations listener's address (`/healthz`, `/metrics` over plain HTTP), `None` when
    /// `ops_listen` is `off`.
    pub fn ops_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        parse_ops_listen(&self.ops_listen).map_err(|e| ConfigError::Invalid(format!("ops_listen: {e}")))
    }

    /// The server names, parsed.
    pub fn service_names(&self) -> Result<Vec<ServiceName>, ConfigError> {
        ServiceName::parse_list(&self.server_names).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The default entitlement, if one is set.
    pub fn default_entitlement(&self) -> Option<&str> {
        Some(self.default_entitlement.as_str()).filter(|s| !s.is_empty())
    }
}

/// An operations listener address: `off` (none) or `IP:PORT`.
pub fn parse_ops_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("{s:?} is not an address as IP:PORT (e.g. 127.0.0.1:8444) or \"off\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_is_the_default() {
        assert_eq!(Config::parse(DEFAULT_CONFIG).unwrap(), Config::default());
        assert_eq!(Config::parse("").unwrap(), Config::default());
        // Every field of Config appears in the commented file.
        for field in [
            "listen",
            "server_names",
            "default_entitlement",
            "max_body_bytes",
            "handshake_timeout_secs",
            "header_timeout_secs",
            "request_timeout_secs",
            "max_connections",
            "max_in_flight",
            "shutdown_timeout_secs",
            "reload_interval_secs",
            "log_format",
            "ops_listen",
        ] {
            assert!(DEFAULT_CONFIG.contains(&format!("\n{field} = ")), "{field}");
        }
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(Config::parse("listen = 5").is_err());
        assert!(Config::parse("unknown = 1").is_err());
        assert!(Config::parse("server_names = []").is_err());
        assert!(Config::parse("server_names = [\"bad name\"]").is_err());
        assert!(Config::parse("max_body_bytes = 1").is_err());
        assert!(Config::parse("request_timeout_secs = 0").is_err());
        assert!(Config::parse("log_format = \"xml\"").is_err());
        assert!(Config::parse("ops_listen = \"localhost\"").is_err());
        assert_eq!(
            Config::parse("ops_listen = \"off\"")
                .unwrap()
                .ops_listen()
                .unwrap(),
            None
        );
        let c = Config::parse("default_entitlement = \"f.1\"\nlisten = \"0.0.0.0:9000\"").unwrap();
        assert_eq!(c.default_entitlement(), Some("f.1"));
        assert_eq!(c.listen.port(), 9000);
    }
}
