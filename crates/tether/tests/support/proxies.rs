//! Real proxies for the tests, from Debian: tinyproxy (HTTP CONNECT) and microsocks (SOCKS5),
//! each started in the foreground on a free port on 127.0.0.1 and stopped when dropped.
//! `scripts/test.sh` installs both packages; a test that finds a binary missing fails and
//! says so (it never skips).

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn binary(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Waits until something accepts TCP connections on `port`.
fn wait_listening(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running proxy process; killed when dropped.
pub(crate) struct ProxyProcess {
    child: Option<Child>,
    port: u16,
    spawn: Box<dyn Fn(u16) -> Child + Send + Sync>,
    what: &'static str,
    /// tinyproxy's configuration file, removed on drop.
    config: Option<std::path::PathBuf>,
}

impl ProxyProcess {
    fn start(what: &'static str, spawn: Box<dyn Fn(u16) -> Child + Send + Sync>) -> Self {
        let mut p = Self {
            child: None,
            port: free_port(),
            spawn,
            what,
            config: None,
        };
        p.restart();
        p
    }

    /// tinyproxy, with Basic credentials required when `auth` is given.
    pub(crate) fn tinyproxy(auth: Option<(&str, &str)>) -> Self {
        let auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let dir = std::env::temp_dir();
        let mut p = Self {
            child: None,
            port: free_port(),
            spawn: Box::new(|_| unreachable!()),
            what: "tinyproxy",
            config: None,
        };
        let config = dir.join(format!(
            "tether-tinyproxy-{}-{}.conf",
            std::process::id(),
            p.port
        ));
        let mut text = format!(
            "Port {}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\nMaxClients 100\n\
             LogLevel Critical\n",
            p.port
        );
        if let Some((user, password)) = &auth {
            text.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        std::fs::File::create(&config)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("write tinyproxy's configuration");
        let path = config.clone();
        p.spawn = Box::new(move |_| {
            let bin = binary("TETHER_TINYPROXY", "tinyproxy");
            Command::new(&bin)
                .arg("-d")
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {bin} ({e}): install Debian's tinyproxy (apt-get install \
                         tinyproxy) or run bash scripts/test.sh, which does"
                    )
                })
        });
        p.config = Some(config);
        p.restart();
        p
    }

    /// microsocks, with a user name and password required when `auth` is given.
    pub(crate) fn microsocks(auth: Option<(&str, &str)>) -> Self {
        let auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
        Self::start(
            "microsocks",
            Box::new(move |port| {
                let bin = binary("TETHER_MICROSOCKS", "microsocks");
                let mut cmd = Command::new(&bin);
                cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
                if let Some((user, password)) = &auth {
                    cmd.args(["-u", user, "-P", password]);
                }
                cmd.stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot start {bin} ({e}): install Debian's microsocks (apt-get \
                             install microsocks) or run bash scripts/test.sh, which does"
                        )
                    })
            }),
        )
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Kills the process (its tunnels break with it).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let mut child = (self.spawn)(self.port);
        wait_listening(self.port, self.what, &mut child);
        self.child = Some(child);
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
    }
}
