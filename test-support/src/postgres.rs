//! A Postgres cluster of one harness's own, for the fault suite, which shuts Postgres down
//! the hard way (`pg_ctl stop -m immediate`) and must not do that to the shared one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::pki::ServerFiles;
use crate::watchdog::{Watchdog, shell_quote};

/// A private cluster in a temporary folder on a free port, with a superuser `shop` (password
/// `shop`) and a database `shop`. Stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    /// Whether it takes TLS connections only (see [`PrivatePostgres::start_with_tls`]).
    tls: bool,
    dir: PathBuf,
    bin: PathBuf,
    /// Stops the cluster and removes its folder should this process end without `Drop`.
    _watchdog: Watchdog,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The newest `/usr/lib/postgresql/<version>/bin` with an `initdb`.
fn server_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install Debian's postgresql package (./dev does)")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql")
}

impl PrivatePostgres {
    /// initdb into a fresh folder and start the server.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// Like [`Self::start`], with TLS on the server certificate `server` and every TCP
    /// connection required to use it (`hostssl` in pg_hba.conf).
    pub fn start_with_tls(server: &ServerFiles) -> anyhow::Result<Self> {
        Self::start_with(Some(server))
    }

    fn start_with(tls: Option<&ServerFiles>) -> anyhow::Result<Self> {
        let bin = server_bin()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir =
            std::env::temp_dir().join(format!("shop-postgres-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let stop = format!(
            "{} -D {} -m immediate -w stop; rm -rf {}",
            shell_quote(&bin.join("pg_ctl").display().to_string()),
            shell_quote(&dir.join("data").display().to_string()),
            shell_quote(&dir.display().to_string()),
        );
        let watchdog = Watchdog::arm(&if is_root() {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        });
        let cluster = Self {
            port,
            tls: tls.is_some(),
            dir,
            bin,
            _watchdog: watchdog,
        };
        let pwfile = cluster.dir.join("pwfile");
        std::fs::write(&pwfile, "shop\n")?;
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&cluster.dir))?;
        }
        cluster.as_owner(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "shop",
                &format!("--pwfile={}", pwfile.display()),
                "-E",
                "UTF8",
                "--no-locale",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ],
        )?;
        if let Some(server) = tls {
            cluster.install_certificate(server)?;
            let hba = cluster.dir.join("data/pg_hba.conf");
            let text = std::fs::read_to_string(&hba)?;
            let only_tls: Vec<String> = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}"),
                    None => l.to_owned(),
                })
                .collect();
            std::fs::write(&hba, only_tls.join("\n") + "\n")?;
        }
        cluster.start_server()?;
        run(Command::new(cluster.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "shop"])
            .args(["-d", "postgres", "-qc", "CREATE DATABASE shop"])
            .env("PGPASSWORD", "shop"))?;
        Ok(cluster)
    }

    /// Serves `server` (key and certificate) from now on: new connections see it.
    pub fn replace_certificate(&self, server: &ServerFiles) -> anyhow::Result<()> {
        anyhow::ensure!(self.tls, "this cluster was started without TLS");
        self.install_certificate(server)?;
        self.as_owner("pg_ctl", &["-D", &self.data(), "reload"])
    }

    /// Copies the files into the data folder, owned by the server's user, the key private
    /// to it (Postgres refuses a key others can read).
    fn install_certificate(&self, server: &ServerFiles) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        std::fs::copy(&server.certificate, data.join("server.crt"))?;
        std::fs::copy(&server.key, data.join("server.key"))?;
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        if is_root() {
            run(Command::new("chown")
                .args(["postgres:"])
                .arg(data.join("server.crt"))
                .arg(data.join("server.key")))?;
        }
        Ok(())
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn as_owner(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(tool);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        run(command.args(args).current_dir(&self.dir))
    }

    fn start_server(&self) -> anyhow::Result<()> {
        let mut options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c max_connections=300",
            self.port,
            self.dir.display()
        );
        if self.tls {
            options.push_str(" -c ssl=on");
        }
        let log = self.dir.join("postgres.log").display().to_string();
        self.as_owner(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        )
    }

    /// The URL of database `shop`.
    pub fn url(&self) -> String {
        format!("postgres://shop:shop@127.0.0.1:{}/shop", self.port)
    }

    /// `pg_ctl stop -m immediate` (every backend killed, crash recovery on the next
    /// start), then start again on the same port and data.
    pub fn crash_and_restart(&self) -> anyhow::Result<()> {
        self.as_owner(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )?;
        self.start_server()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.as_owner(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
