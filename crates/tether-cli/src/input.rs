//! Standard input, line by line: a line editor with history when stdin and stdout are a
//! terminal, tokio's reader otherwise. And the bounded queue of lines waiting for a connection.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;

use crate::output;

/// Most lines kept while no connection is open; when full, the oldest is dropped.
pub(crate) const QUEUE_LIMIT: usize = 1024;

/// Lines read ahead of the connection loop (backpressure on standard input beyond that).
const CHANNEL_CAPACITY: usize = 64;

/// What standard input produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InputEvent {
    /// One line, without its line ending.
    Line(String),
    /// End of input (end of file, Ctrl-D in the editor).
    Eof,
    /// The first Ctrl-C (in the editor, or the signal); a second one exits at once.
    Interrupt,
}

/// Starts reading standard input and Ctrl-C; events arrive on the returned channel, which
/// ends with [`InputEvent::Eof`] (Ctrl-C may follow at any time).
pub(crate) fn start() -> mpsc::Receiver<InputEvent> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    // The editor draws on stdout: use it only when both ends are the terminal. Otherwise the
    // terminal's own line discipline (if any) echoes and edits lines.
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if interactive && start_editor(tx.clone()) {
        // The editor reports Ctrl-C itself (the terminal is in raw mode while it reads).
    } else {
        tokio::spawn(read_lines(tx.clone()));
    }
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            interrupt(&tx);
        }
    });
    rx
}

/// Reports Ctrl-C: the first asks for a clean close; a second one exits at once, whatever the
/// connection loop is waiting for.
fn interrupt(tx: &mpsc::Sender<InputEvent>) {
    static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);
    if INTERRUPTS.fetch_add(1, Ordering::SeqCst) > 0 || tx.try_send(InputEvent::Interrupt).is_err()
    {
        output::exit(crate::EXIT_INTERRUPTED);
    }
}

/// Reads lines with tokio (standard input is a file or a pipe).
async fn read_lines(tx: mpsc::Sender<InputEvent>) {
    let mut reader = BufReader::new(tokio::io::stdin());
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if tx.send(InputEvent::Line(line_of(&buf))).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(InputEvent::Eof).await;
}

/// The text of a line read with its ending: without `\n` or `\r\n`, invalid UTF-8 replaced.
fn line_of(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the line editor on a thread of its own; false if it cannot run here.
fn start_editor(tx: mpsc::Sender<InputEvent>) -> bool {
    let config = rustyline::Config::builder()
        .auto_add_history(true)
        .max_history_size(1000)
        .map(|b| b.build());
    let Ok(config) = config else {
        return false;
    };
    let Ok(mut editor) = rustyline::DefaultEditor::with_config(config) else {
        return false;
    };
    let Ok(printer) = editor.create_external_printer() else {
        return false;
    };
    output::save_terminal();
    output::install_printer(printer);
    std::thread::spawn(move || loop {
        let event = match editor.readline("> ") {
            Ok(line) => InputEvent::Line(line),
            Err(rustyline::error::ReadlineError::Interrupted) => {
                interrupt(&tx);
                continue;
            }
            Err(_) => InputEvent::Eof,
        };
        let last = event == InputEvent::Eof;
        if tx.blocking_send(event).is_err() || last {
            return;
        }
    });
    true
}

/// Lines waiting for a connection, oldest first, at most [`QUEUE_LIMIT`].
#[derive(Debug, Default)]
pub(crate) struct LineQueue {
    lines: VecDeque<String>,
    limit: usize,
}

impl LineQueue {
    /// An empty queue holding at most `limit` lines.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// Adds a line at the back; returns the oldest line if it had to be dropped for room.
    pub(crate) fn push(&mut self, line: String) -> Option<String> {
        let dropped = if self.lines.len() >= self.limit {
            self.lines.pop_front()
        } else {
            None
        };
        self.lines.push_back(line);
        dropped
    }

    /// Puts a line back at the front (its send failed); drops the newest if full.
    pub(crate) fn push_front(&mut self, line: String) {
        if self.lines.len() >= self.limit {
            self.lines.pop_back();
        }
        self.lines.push_front(line);
    }

    /// Takes the oldest line.
    pub(crate) fn pop(&mut self) -> Option<String> {
        self.lines.pop_front()
    }

    /// True when no line waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_drops_the_oldest_when_full() {
        let mut q = LineQueue::new(2);
        assert_eq!(q.push("a".into()), None);
        assert_eq!(q.push("b".into()), None);
        assert_eq!(q.push("c".into()), Some("a".into()));
        assert_eq!(q.lines.len(), 2);
        q.push_front("z".into());
        assert_eq!(q.pop().as_deref(), Some("z"));
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn line_endings_are_stripped() {
        assert_eq!(line_of(b"hello\n"), "hello");
        assert_eq!(line_of(b"hello\r\n"), "hello");
        assert_eq!(line_of(b"last"), "last");
        assert_eq!(line_of(b"\xffx\n"), "\u{fffd}x");
    }
}
