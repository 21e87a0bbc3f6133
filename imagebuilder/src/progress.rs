//! Progress reporting for every long step: indicatif bars on a terminal, plain
//! lines otherwise.
//!
//! One [`Reporter`] is shared (it is cheap to clone) by the fetcher, the builder,
//! the stager and the image writer. On a terminal, downloads get a bar with bytes,
//! rate and ETA; everything else prints one line per step above the bars. When
//! stderr is not a terminal (CI, logs, tests), the same events are plain lines.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Reports progress to stderr.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    multi: Option<MultiProgress>,
    verbose: bool,
    quiet: bool,
}

impl Reporter {
    /// Bars if stderr is a terminal, plain lines otherwise. `verbose` streams
    /// build logs.
    pub fn new(verbose: bool) -> Reporter {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Reporter {
            inner: Arc::new(Inner {
                multi,
                verbose,
                quiet: false,
            }),
        }
    }

    /// A reporter that prints nothing (for library users and unit tests).
    pub fn quiet() -> Reporter {
        Reporter {
            inner: Arc::new(Inner {
                multi: None,
                verbose: false,
                quiet: true,
            }),
        }
    }

    /// Whether build logs are streamed.
    pub fn verbose(&self) -> bool {
        self.inner.verbose
    }

    /// Prints one line.
    pub fn line(&self, msg: &str) {
        if self.inner.quiet {
            return;
        }
        match &self.inner.multi {
            Some(m) => {
                // A hidden or closed terminal: fall back to a plain line.
                if m.println(msg).is_err() {
                    eprintln!("{msg}");
                }
            }
            None => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{msg}");
            }
        }
    }

    /// Prints a block of lines as is (a failed build's log tail).
    pub fn block(&self, text: &str) {
        for l in text.lines() {
            self.line(l);
        }
    }

    /// A build step of a package: `[tcpdump] build`.
    pub fn step(&self, package: &str, step: &str) {
        self.line(&format!("[{package}] {step}"));
    }

    /// One line of a build log; shown only with `-v`.
    pub fn log_line(&self, package: &str, line: &str) {
        if self.inner.verbose {
            self.line(&format!("[{package}] | {line}"));
        }
    }

    /// Starts a download of `total` bytes (if known).
    pub fn download(&self, package: &str, url: &str, total: Option<u64>) -> Download {
        self.bytes(format!("[{package}] fetch {url}"), total)
    }

    /// Starts any long step measured in bytes (hashing the staged files,
    /// writing the image): a bar with bytes, rate and ETA on a terminal, a
    /// line at the start and one at the end otherwise.
    pub fn bytes(&self, label: String, total: Option<u64>) -> Download {
        let bar = match &self.inner.multi {
            Some(m) if !self.inner.quiet => {
                let bar = m.add(match total {
                    Some(t) => ProgressBar::new(t),
                    None => ProgressBar::no_length(),
                });
                // OK to unwrap: the templates are constants and valid.
                let style = if total.is_some() {
                    ProgressStyle::with_template(
                        "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                    )
                    .unwrap()
                } else {
                    ProgressStyle::with_template("{msg} {bytes} {bytes_per_sec}").unwrap()
                };
                bar.set_style(style);
                bar.set_message(label.clone());
                Some(bar)
            }
            _ => {
                self.line(&label);
                None
            }
        };
        Download {
            reporter: self.clone(),
            bar,
            label,
            bytes: 0,
            start: Instant::now(),
        }
    }
}

/// One download (or other step measured in bytes) in progress.
pub struct Download {
    reporter: Reporter,
    bar: Option<ProgressBar>,
    label: String,
    bytes: u64,
    start: Instant,
}

impl Download {
    /// `done` bytes are done in all.
    pub fn set(&mut self, done: u64) {
        self.bytes = done;
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    /// `n` more bytes arrived.
    pub fn inc(&mut self, n: u64) {
        self.bytes += n;
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// The download completed and was verified (or the step is done).
    pub fn finish(self) {
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let msg = format!(
            "{}: {} in {:.1} s ({}/s)",
            self.label,
            human_bytes(self.bytes),
            secs,
            human_bytes((self.bytes as f64 / secs) as u64)
        );
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        self.reporter.line(&msg);
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// `1.4 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
