//! Unix domain sockets: binding a listener's socket file safely, and removing it afterwards.
//!
//! A socket file outlives the process that bound it: after a crash (or `kill -9`) the path
//! stays, and binding it again fails with "address in use". [`bind`] removes such a file only
//! when it is provably stale: it is a socket (not a regular file, a directory or a symbolic
//! link, which are never removed) and connecting to it is refused, which means that nobody
//! listens on it. A socket somebody listens on is left alone and the bind fails with
//! [`io::ErrorKind::AddrInUse`].

use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

/// How long the probe of an existing socket file may take before it counts as in use (a
/// listener whose backlog is full does not answer at once, but it is alive).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The socket file a listener bound: removed on drop, which must come after the listener's,
/// if it is still the same file, so that a server that bound the path again meanwhile keeps
/// its own.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file bound.
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let same =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        // A freed inode number is given again at once (tmpfs and ext4 do): a file with our
        // inode may be another server's, bound after it found ours stale. Ours refuses
        // connections now that our listener is closed; another server's accepts them.
        if same && refuses(&self.path) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::debug!(path = %self.path.display(), error = %e, "cannot remove the socket file");
            }
        }
    }
}

/// Whether connecting to the socket `path` is refused: nobody listens on it. (A blocking
/// connect to a Unix socket answers at once, unless a live listener's backlog is full.)
fn refuses(path: &Path) -> bool {
    matches!(
        std::os::unix::net::UnixStream::connect(path),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

/// Binds a listener to `path`, first removing a stale socket file there (see the module
/// documentation). Fails with [`io::ErrorKind::AddrInUse`] when a server listens on `path`,
/// and with [`io::ErrorKind::AlreadyExists`] when `path` is something other than a socket.
pub(crate) async fn bind(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
    remove_if_stale(path).await?;
    let listener = UnixListener::bind(path).map_err(|e| annotate(e, path))?;
    let meta = std::fs::symlink_metadata(path)?;
    let file = SocketFile {
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    };
    Ok((listener, file))
}

async fn remove_if_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(annotate(e, path)),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; it is left alone",
                path.display()
            ),
        ));
    }
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
        // Nobody listens: the file is what a server that ended without cleaning up left.
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::debug!(path = %path.display(), "removing a stale socket file");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(annotate(e, path)),
                _ => Ok(()),
            }
        }
        // Permission denied and the like: not ours to decide.
        Ok(Err(e)) if e.kind() != io::ErrorKind::WouldBlock => Err(annotate(e, path)),
        // Accepted, or alive but busy (a full backlog).
        _ => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("a server listens on {} already", path.display()),
        )),
    }
}

/// `e`, with the path in its message.
fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tether-unix-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced_and_a_live_one_is_not() {
        let dir = temp_dir("stale");
        let path = dir.join("s.sock");
        // A socket file nobody listens on: bound with std, then the listener dropped (std
        // does not remove the file).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (listener, file) = bind(&path).await.unwrap();
        // Live now: a second bind must fail and leave the file.
        let e = bind(&path).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(path.exists());
        drop(listener);
        drop(file);
        assert!(!path.exists(), "the socket file is removed on drop");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_socket_is_never_removed() {
        let dir = temp_dir("regular");
        let path = dir.join("not-a-socket");
        std::fs::write(&path, b"precious").unwrap();
        let e = bind(&path).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_socket_bound_again_on_a_reused_inode_is_not_removed_by_the_first_server() {
        let dir = temp_dir("rebound");
        let path = dir.join("s.sock");
        let (first, first_file) = bind(&path).await.unwrap();
        drop(first);
        // The first listener is gone but its file object is not (still shutting down); the
        // next server finds the file stale and binds it anew, usually on the inode just
        // freed, so that the inode alone does not tell the two files apart.
        let (second, second_file) = bind(&path).await.unwrap();
        drop(first_file);
        assert!(path.exists(), "the second server's file stays");
        drop(second);
        drop(second_file);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
