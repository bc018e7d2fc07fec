//! A Postgres instance of the test's own that accepts TLS connections only,
//! with a certificate signed by a CA made for the test (for `127.0.0.1` and
//! `localhost`). The machine's cluster keeps its own (self-signed)
//! certificate and its plain connections; nothing of it changes.
//!
//! The instance is initialised in a temporary directory with the
//! machine's Postgres binaries (`pg_config --bindir`), run as the
//! `postgres` user when the test runs as root (Postgres refuses root), on
//! a free port, and stopped when dropped.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)] // each suite uses a subset

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running TLS-only Postgres and the CA its certificate is signed by.
pub struct TlsCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    as_postgres: bool,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// The CA certificate (PEM) that signed the server's certificate.
    pub ca: PathBuf,
    /// Another CA's certificate, which signed nothing this cluster serves.
    pub other_ca: PathBuf,
}

impl TlsCluster {
    /// Starts one. Without Postgres binaries it says so and returns `None`,
    /// except with `CI=true`, where that fails the test.
    pub fn start() -> Option<Self> {
        let Some(bindir) = bindir() else {
            assert!(
                !mana_sync_testkit::in_ci(),
                "CI=true but no Postgres binaries (pg_config --bindir) to run a TLS cluster"
            );
            eprintln!("skipping: no Postgres binaries (pg_config --bindir) for a TLS cluster");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let as_postgres = is_root();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("certs dir");
        let ca = write_certificates(&certs);
        let other_ca = certs.join("other-ca.pem");
        std::fs::write(&other_ca, new_ca().0.pem()).expect("other-ca.pem");
        let cluster = Self {
            port: free_port(),
            bindir,
            as_postgres,
            ca,
            other_ca,
            dir,
        };
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.dir.path()));
            // The temporary directory itself is root's, 0700.
            run(Command::new("chmod").arg("755").arg(cluster.dir.path()));
        }
        let data = cluster.data();
        run(&mut cluster.tool(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        ));
        // TLS or nothing: a plain connection finds no pg_hba.conf entry.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .expect("pg_hba.conf");
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c fsync=off",
            cluster.port,
            cluster.dir.path().display(),
            certs.join("server.crt").display(),
            certs.join("server.key").display(),
        );
        let log = cluster.dir.path().join("postgres.log");
        let started = cluster
            .tool(
                "pg_ctl",
                &[
                    "-D",
                    &data.display().to_string(),
                    "-l",
                    &log.display().to_string(),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )
            .output()
            .expect("pg_ctl runs");
        assert!(
            started.status.success(),
            "the TLS cluster did not start: {}{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Some(cluster)
    }

    /// A URL of database `db` as `postgres`, with `query` (libpq parameters).
    pub fn url(&self, db: &str, query: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}?{query}", self.port)
    }

    /// `verify-full` against this cluster's CA.
    pub fn verified_url(&self, db: &str) -> String {
        self.url(
            db,
            &format!("sslmode=verify-full&sslrootcert={}", self.ca.display()),
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tool(&self, name: &str, args: &[&str]) -> Command {
        let program = self.bindir.join(name);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(program)
                .args(args);
            command
        } else {
            let mut command = Command::new(program);
            command.args(args);
            command
        }
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = self
            .tool("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    dir.join("initdb").is_file().then_some(dir)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn run(command: &mut Command) {
    let output = command.output().expect("runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A new CA: its certificate, and the issuer that signs with its key.
fn new_ca() -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "mana-sync test CA");
    let certificate = params.self_signed(&key).expect("CA certificate");
    (certificate, Issuer::new(params, key))
}

/// A CA and a server certificate it signed, for `127.0.0.1` and
/// `localhost`; returns the CA's path.
fn write_certificates(dir: &Path) -> PathBuf {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let (ca_cert, issuer) = new_ca();
    let server_key = KeyPair::generate().expect("server key");
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).expect("ca.pem");
    std::fs::write(dir.join("server.crt"), server_cert.pem()).expect("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&key, server_key.serialize_pem()).expect("server.key");
    // Postgres refuses a key others may read.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    ca
}
