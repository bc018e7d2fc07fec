//! Every connection to Postgres starts here: the pool, the relay's listener
//! and notifier, migrations as the owner, and the command-line tools
//! (`export`, `import`, `compact`, `migrate`, `import-seed`).
//!
//! [`PgConnector::from_url`] reads a `postgres://` URL with libpq's TLS
//! parameters, which tokio-postgres only partly knows: `sslmode` (`disable`,
//! `prefer` — the default —, `require`, `verify-ca`, `verify-full`) and
//! `sslrootcert` (a PEM file of trusted certificates, or `system`). It takes
//! them out of the URL, hands the rest to tokio-postgres, and builds the
//! rustls connector that does what libpq would (see [`super::tls`]). One
//! place, so that no connection can end up with other settings than the
//! URL asked for.

use std::path::{Path, PathBuf};

use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls;
use crate::{StoreError, StoreResult, redact_url};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// TLS when the server offers it (no certificate check), else plain.
    Prefer,
    /// TLS or no connection; the certificate is not checked, unless a root
    /// certificate is given (then as [`SslMode::VerifyCa`], like libpq).
    Require,
    /// TLS, with a certificate signed by a trusted root; any host name.
    VerifyCa,
    /// TLS, with a certificate signed by a trusted root and naming the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq's `allow` tries plain first; nothing here wants that.
            other => {
                return Err(format!(
                    "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    /// libpq's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file (`sslrootcert=PATH`, or libpq's default
    /// `~/.postgresql/root.crt`).
    File(PathBuf),
    /// The operating system's trusted roots (`sslrootcert=system`).
    System,
}

/// The TLS settings of a URL, as libpq reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The mode asked for (`prefer` when the URL names none).
    pub mode: SslMode,
    /// The roots to verify against, when the mode verifies.
    pub roots: Option<RootCerts>,
}

/// A parsed `postgres://` URL with the connector its TLS settings call for.
/// Cheap to clone.
#[derive(Clone)]
pub struct PgConnector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    settings: TlsSettings,
}

impl std::fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnector")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The connection half of [`PgConnector::connect`]: poll it (spawn it) for
/// the client to work.
pub type PgConnection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

impl PgConnector {
    /// Reads `url` (`postgres://…` or `postgresql://…`, libpq's query
    /// parameters included) and prepares its TLS settings: root
    /// certificates are read now, so a missing or unreadable file is a
    /// configuration error before anything connects.
    pub fn from_url(url: &str) -> StoreResult<Self> {
        let invalid =
            |problem: String| StoreError::Config(format!("{}: {problem}", redact_url(url)));
        let (rest, mode, rootcert) = split_tls_parameters(url).map_err(invalid)?;
        let mut config: tokio_postgres::Config =
            rest.parse().map_err(|e| invalid(format!("{e}")))?;
        let settings = settings(mode, rootcert, default_root_file().as_deref()).map_err(invalid)?;
        config.ssl_mode(match settings.mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        });
        let tls = tls::client_config(&settings).map_err(invalid)?;
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(tls),
            settings,
        })
    }

    /// The driver's settings (host, user, database, options…).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The driver's settings, to change before connecting (application
    /// name, keepalives, options); the TLS settings stay.
    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    /// The TLS settings the URL asked for.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The TLS connector, for a connection pool.
    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    /// Opens one connection.
    pub async fn connect(&self) -> Result<(Client, PgConnection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// libpq's default root certificate file, `~/.postgresql/root.crt`.
fn default_root_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".postgresql").join("root.crt"))
}

/// Decides the mode and roots the way libpq does: `verify-*` needs roots
/// (`sslrootcert`, else `~/.postgresql/root.crt` if it exists); `require`
/// with roots verifies like `verify-ca`; `sslrootcert=system` allows only
/// `verify-full` (a public CA vouches for any name, so a weaker check would
/// accept any server with a public certificate).
fn settings(
    mode: Option<SslMode>,
    rootcert: Option<String>,
    default_file: Option<&Path>,
) -> Result<TlsSettings, String> {
    let explicit = rootcert.map(|value| match value.as_str() {
        "system" => RootCerts::System,
        _ => RootCerts::File(PathBuf::from(value)),
    });
    let mode = match (mode, &explicit) {
        (Some(mode), _) => mode,
        // libpq: sslrootcert=system makes verify-full the default.
        (None, Some(RootCerts::System)) => SslMode::VerifyFull,
        (None, _) => SslMode::Prefer,
    };
    if explicit == Some(RootCerts::System) && mode != SslMode::VerifyFull {
        return Err(format!(
            "sslrootcert=system needs sslmode=verify-full (not {})",
            mode.name()
        ));
    }
    let default = || {
        default_file
            .filter(|path| path.is_file())
            .map(|path| RootCerts::File(path.to_owned()))
    };
    let roots = match mode {
        SslMode::Disable | SslMode::Prefer => None,
        // libpq: "if a root CA file exists, require behaves like verify-ca".
        SslMode::Require => explicit.or_else(default),
        SslMode::VerifyCa | SslMode::VerifyFull => match explicit.or_else(default) {
            Some(roots) => Some(roots),
            None => {
                return Err(format!(
                    "sslmode={} needs the server's root certificate: set sslrootcert=PATH \
                     (a PEM file), or sslrootcert=system for the system's trusted roots \
                     (~/.postgresql/root.crt does not exist either)",
                    mode.name()
                ));
            }
        },
    };
    let mode = match (mode, &roots) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    Ok(TlsSettings { mode, roots })
}

/// Takes libpq's TLS parameters out of `url`'s query; returns the URL
/// without them (for tokio-postgres), `sslmode` and `sslrootcert`.
/// Parameters for client certificates are refused rather than ignored:
/// a server that asks for one would fail later with a vaguer error.
fn split_tls_parameters(url: &str) -> Result<(String, Option<SslMode>, Option<String>), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("not a postgres:// URL".into());
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, None));
    };
    let mut kept = Vec::new();
    let (mut mode, mut rootcert) = (None, None);
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .map(|text| text.into_owned())
                .map_err(|_| format!("parameter `{key}` is not UTF-8"))
        };
        match decode(key)?.as_str() {
            "sslmode" => mode = Some(SslMode::parse(&decode(value)?)?),
            "sslrootcert" => rootcert = Some(decode(value)?),
            unsupported @ ("sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir") => {
                return Err(format!(
                    "`{unsupported}` is not supported (client certificates and revocation \
                     lists are not implemented)"
                ));
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, rootcert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_tls_parameters_out_and_keeps_the_rest() {
        let (rest, mode, root) = split_tls_parameters(
            "postgres://u:p@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=3",
        )
        .expect("parses");
        assert_eq!(
            rest,
            "postgres://u:p@h:5/db?application_name=x&connect_timeout=3"
        );
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));
        let (rest, mode, root) = split_tls_parameters("postgresql://h/db").expect("parses");
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgresql://h/db", None, None)
        );
    }

    #[test]
    fn refuses_what_it_does_not_implement() {
        let error = split_tls_parameters("postgres://h/db?sslmode=allow").expect_err("refused");
        assert!(error.contains("sslmode `allow`"), "{error}");
        let error = split_tls_parameters("postgres://h/db?sslcert=c.pem").expect_err("refused");
        assert!(error.contains("sslcert"), "{error}");
    }

    #[test]
    fn decides_like_libpq() {
        let file = || Some("/ca.pem".to_owned());
        let root = || Some(RootCerts::File("/ca.pem".into()));
        let decide = |mode, rootcert| settings(mode, rootcert, None).expect("valid");
        assert_eq!(decide(None, None).mode, SslMode::Prefer);
        assert_eq!(decide(Some(SslMode::Require), None).roots, None);
        // require with a root certificate verifies the chain.
        let require = decide(Some(SslMode::Require), file());
        assert_eq!((require.mode, require.roots), (SslMode::VerifyCa, root()));
        assert_eq!(decide(Some(SslMode::VerifyFull), file()).roots, root());
        assert_eq!(
            decide(None, Some("system".into())).mode,
            SslMode::VerifyFull
        );
        assert!(settings(Some(SslMode::VerifyCa), None, None).is_err());
        assert!(settings(Some(SslMode::Require), Some("system".into()), None).is_err());
        // libpq's default file counts when it exists.
        let default = std::env::temp_dir().join(format!("mana-root-{}.crt", std::process::id()));
        std::fs::write(&default, b"").expect("written");
        let found = settings(Some(SslMode::Require), None, Some(&default)).expect("valid");
        assert_eq!(found.mode, SslMode::VerifyCa);
        std::fs::remove_file(&default).expect("removed");
        assert!(settings(Some(SslMode::VerifyFull), None, Some(&default)).is_err());
    }
}
