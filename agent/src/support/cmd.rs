//! The one place edgepatch (agent and builder) runs external programs. Every command line is
//! logged exactly as run, arguments are passed as a vector (never through a shell), and failures
//! come back with the exit status and the last lines of stderr for a one-line message.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }

    /// The last non-empty stderr (or stdout) line: what an operator needs on one console line.
    /// The line that says why: the last one reporting an error, with the line after it when
    /// it ends in ':' (dpkg: "error processing archive X (--install):" + the reason; its closing
    /// "Errors were encountered while processing:" + file list says nothing), else the last line.
    pub fn last_line(&self) -> String {
        let lines: Vec<&str> = self
            .stdout
            .lines()
            .chain(self.stderr.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let why = lines.iter().rposition(|l| {
            l.to_ascii_lowercase().contains("error") && !l.starts_with("Errors were encountered")
        });
        match why {
            Some(i) if lines[i].ends_with(':') && i + 1 < lines.len() => {
                format!("{} {}", lines[i], lines[i + 1])
            }
            Some(i) => lines[i].to_string(),
            None => lines.last().unwrap_or(&"(no output)").to_string(),
        }
    }
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Cmd {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.env
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Cmd {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// The command line as a shell would show it, for logs and messages.
    pub fn display(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            s += &format!("{}={} ", k.to_string_lossy(), v.to_string_lossy());
        }
        s += &self.program.to_string_lossy();
        for a in &self.args {
            let a = a.to_string_lossy();
            if a.is_empty()
                || a.contains(|c: char| c.is_whitespace() || "'\"$`\\*?;&|<>()".contains(c))
            {
                s += &format!(" '{}'", a.replace('\'', "'\\''"));
            } else {
                s += &format!(" {a}");
            }
        }
        s
    }

    /// Run to completion with output captured. Err only when the program could not start.
    pub fn output(&self) -> std::io::Result<Output> {
        log::info!("run: {}", self.display());
        let mut c = Command::new(&self.program);
        c.args(&self.args).stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        let out = c.output().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", self.program.to_string_lossy()),
            )
        })?;
        let result = Output {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if !result.ok() {
            log::info!("exit {:?}: {}", result.status, result.last_line());
        }
        Ok(result)
    }

    /// Run with stdout going straight into `out` (binary output of any size, e.g. a tar stream
    /// from `dpkg-deb --fsys-tarfile`), stderr captured; require exit 0.
    pub fn run_to_file(&self, out: std::fs::File) -> Result<(), String> {
        log::info!("run: {} > file", self.display());
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        let name = self.program.to_string_lossy();
        let out = c.output().map_err(|e| format!("cannot run {name}: {e}"))?;
        let result = Output {
            status: out.status.code(),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if result.ok() {
            return Ok(());
        }
        Err(format!(
            "{name} exited {}: {}",
            result
                .status
                .map_or("by signal".to_string(), |c| c.to_string()),
            result.last_line()
        ))
    }

    /// Run and require exit 0; the error names the program and its last output line.
    pub fn run(&self) -> Result<Output, String> {
        let out = self.output().map_err(|e| e.to_string())?;
        if out.ok() {
            Ok(out)
        } else {
            Err(format!(
                "{} exited {}: {}",
                self.program.to_string_lossy(),
                out.status
                    .map_or("by signal".to_string(), |c| c.to_string()),
                out.last_line()
            ))
        }
    }

    /// Run with a time limit; the process is killed when it runs over. Output is not captured
    /// (health commands may print a lot); it goes to the agent's stderr.
    pub fn run_with_timeout(&self, limit: std::time::Duration) -> Result<(), String> {
        log::info!("run (limit {}s): {}", limit.as_secs(), self.display());
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let mut child = c
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program.to_string_lossy()))?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => {
                    let how = st.code().map_or("by signal".to_string(), |c| c.to_string());
                    return Err(format!("{} exited {how}", self.display()));
                }
                Ok(None) if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} still running after {}s; killed",
                        self.display(),
                        limit.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(50)),
                Err(e) => return Err(format!("waiting for {}: {e}", self.display())),
            }
        }
    }
}
