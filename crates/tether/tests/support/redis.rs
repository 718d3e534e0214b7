//! A real Redis for the tests: Debian's `redis-server`, started on a free port on
//! 127.0.0.1 without persistence, stopped when dropped. `scripts/test.sh` installs it; a test
//! that finds no `redis-server` fails and says so (it never skips).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` of the test's own.
pub(crate) struct Redis {
    child: Option<Child>,
    port: u16,
}

fn binary() -> String {
    std::env::var("TETHER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The process id of the Redis answering on `port`, if one does (`INFO server`).
fn serving_pid(port: u16) -> Option<u32> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    s.write_all(b"INFO server\r\n").ok()?;
    let mut text = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let seen = String::from_utf8_lossy(&text);
        if let Some(start) = seen.find("process_id:").map(|i| i + "process_id:".len()) {
            if let Some(len) = seen[start..].find("\r\n") {
                return seen[start..start + len].parse().ok();
            }
        }
        let n = s.read(&mut buf).ok()?;
        if n == 0 || text.len() > 64 << 10 {
            return None;
        }
        text.extend_from_slice(&buf[..n]);
    }
}

impl Redis {
    /// Starts one on a free port.
    pub(crate) fn start() -> Self {
        for _ in 0..10 {
            let mut redis = Self {
                child: None,
                port: free_port(),
            };
            // Another test's Redis may have taken the port between the two steps: then this
            // one exits at once, and another port is tried.
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 10 free ports");
    }

    /// Starts `redis-server` on `self.port` and waits until it answers there; false if it
    /// exited instead (the port was taken).
    fn spawn(&mut self) -> bool {
        let mut child = Command::new(binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // For `DEBUG SLEEP` (a Redis that stalls); it only listens on 127.0.0.1.
            .args(["--enable-debug-command", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install Debian's redis-server (apt-get install \
                     redis-server) or run bash scripts/test.sh, which does",
                    binary()
                )
            });
        let until = Instant::now() + Duration::from_secs(10);
        // Ours answers, not another test's Redis that got the port first.
        while serving_pid(self.port) != Some(child.id()) {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            assert!(
                Instant::now() < until,
                "redis-server did not answer in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        true
    }

    /// Makes it stall for `seconds` (`DEBUG SLEEP`: it answers nobody meanwhile). Returns
    /// once it answers again.
    pub(crate) fn stall(&self, seconds: f64) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(format!("DEBUG SLEEP {seconds}\r\n").as_bytes())
            .unwrap();
        let mut buf = [0; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"+OK\r\n");
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops it (SIGKILL: everything it held is gone, as after a crash).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub(crate) fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server could not listen on its port again"
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
