//! Child processes of the orchestrator: this same binary in another mode.

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// This executable as it was when the orchestrator started, and a private copy of it that
/// the children run: building the micro-benchmarks rebuilds (replaces) the binary, and the
/// children must run the same code as the orchestrator.
struct Exe {
    original: PathBuf,
    copy: Option<PathBuf>,
}

static EXE: OnceLock<Exe> = OnceLock::new();

/// Records this executable's path and copies it for the children. Call first thing.
pub(crate) fn prepare_children() -> io::Result<()> {
    let original = std::env::current_exe()?;
    let copy = original.with_file_name(format!(".bench-child-{}", std::process::id()));
    std::fs::copy(&original, &copy)?;
    let _ = EXE.set(Exe {
        original,
        copy: Some(copy),
    });
    Ok(())
}

/// Removes the copy made by [`prepare_children`].
pub(crate) fn cleanup_children() {
    if let Some(copy) = EXE.get().and_then(|e| e.copy.as_ref()) {
        let _ = std::fs::remove_file(copy);
    }
}

/// The path this executable had when the process started.
pub(crate) fn own_exe() -> io::Result<PathBuf> {
    match EXE.get() {
        Some(e) => Ok(e.original.clone()),
        None => std::env::current_exe(),
    }
}

fn child_exe() -> io::Result<PathBuf> {
    match EXE.get().and_then(|e| e.copy.as_deref()) {
        Some(copy) => Ok(Path::to_path_buf(copy)),
        None => std::env::current_exe(),
    }
}

/// A running child whose standard output is read line by line.
pub(crate) struct Child {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Child {
    /// Starts this executable with `args`. The child's standard input stays open until
    /// [`finish`](Self::finish); servers and idle holders exit when it closes.
    pub(crate) fn spawn(args: &[String]) -> io::Result<Self> {
        Self::spawn_inner(&child_exe()?, args, args.join(" "), &[])
    }

    /// As [`spawn`](Self::spawn), with these variables added to the child's environment.
    pub(crate) fn spawn_with_env(args: &[String], env: &[(String, String)]) -> io::Result<Self> {
        Self::spawn_inner(&child_exe()?, args, args.join(" "), env)
    }

    /// Starts `program` with `args`, its standard input and output as for
    /// [`spawn`](Self::spawn).
    pub(crate) fn spawn_program(program: &Path, args: &[String]) -> io::Result<Self> {
        let what = format!("{} {}", program.display(), args.join(" "));
        Self::spawn_inner(program, args, what, &[])
    }

    fn spawn_inner(
        program: &Path,
        args: &[String],
        what: String,
        env: &[(String, String)],
    ) -> io::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            lines,
            what,
        })
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a line starting with `prefix`; other lines are echoed.
    pub(crate) fn wait_line(&mut self, prefix: &str, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(line) => eprintln!("  [{}] {line}", self.what),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no {prefix} line from `{}` in {timeout:?}", self.what),
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other(format!(
                        "`{}` exited without a {prefix} line",
                        self.what
                    )))
                }
            }
        }
    }

    /// Writes one line to the child's standard input.
    pub(crate) fn send_line(&mut self, line: &str) -> io::Result<()> {
        use std::io::Write as _;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("standard input already closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()
    }

    /// Kills the child at once (SIGKILL) and reaps it.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes the child's standard input and waits up to `grace` for it to exit, then kills
    /// it.
    pub(crate) fn finish(mut self, grace: Duration) {
        drop(self.stdin.take());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A server child, started and listening.
pub(crate) struct ServerProcess {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl ServerProcess {
    pub(crate) fn start(name: &str, cpu: usize) -> io::Result<Self> {
        Self::start_with(name, cpu, &[])
    }

    /// [`start`](Self::start) with more options for `bench server` (`--broadcast`,
    /// `--deflate-level L`).
    pub(crate) fn start_with(name: &str, cpu: usize, more: &[String]) -> io::Result<Self> {
        let mut args: Vec<String> = [
            "server",
            "--impl",
            name,
            "--addr",
            "127.0.0.1:0",
            "--cpu",
            &cpu.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend_from_slice(more);
        Self::listening(Child::spawn(&args)?)
    }

    /// Starts a server that is not this binary (it must print `LISTENING <addr>` and exit
    /// when its standard input closes).
    pub(crate) fn start_program(program: &Path, args: &[String]) -> io::Result<Self> {
        Self::listening(Child::spawn_program(program, args)?)
    }

    fn listening(mut child: Child) -> io::Result<Self> {
        let line = child.wait_line("LISTENING ", Duration::from_secs(20))?;
        let addr = line["LISTENING ".len()..].trim().to_owned();
        Ok(Self { child, addr })
    }

    pub(crate) fn stop(self) {
        self.child.finish(Duration::from_secs(3));
    }
}
